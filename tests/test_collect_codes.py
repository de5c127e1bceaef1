"""The centre judges the codes of a package itself: a practice whose extractor is rogue or faulty,
signing its packages properly, still cannot put a restricted record or a non-code in the lake."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from collecting import central, copies, hide, plant, reseal, state
from conftest import Extracted
from extracting import Keys
from gpdpr.collect.codes import CentreCodes
from gpdpr.collect.service import REFUSED_NOTE, collect
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.practice.package import MANIFEST
from gpdpr.spec import shipped
from gpdpr.terminology.sctid import check_digit, concept_mask, is_concept_id
from gpdpr.terminology.store import ENV, active, load
from terminology_release import IVF, IVF_CHILD, made, write_release

OLD_IVF = made(9100005)  # retired; the release says IVF replaced it
UNKNOWN = made(9100006)  # a valid identifier no release here knows
BAD_CHECK = IVF_CHILD[:-1] + str((int(IVF_CHILD[-1]) + 1) % 10)
NEVER = "a code of a set the specification never collects"


def _plant(package: Path, keys: Keys, table: str, column: str, code: str, rows: int = 1) -> None:
    """`rows` rows of `table` given `code`, the package signed again: all but its codes verify."""
    plant(package, table, column, code, rows)
    reseal(package, keys)


def _hide(package: Path, keys: Keys, table: str, column: str, code: str) -> None:
    """A file whose dictionary page holds `code` though no row uses it, sealed and signed."""
    hide(package, table, column, code)
    reseal(package, keys)


@pytest.fixture
def centre_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The centre's release is newer than the practices' (the embedded one): it knows a child
    concept of IVF and a retired IVF concept the specification never names."""
    into = tmp_path / "terminology"
    release = write_release(tmp_path / "rf2", retired=[(OLD_IVF, IVF)])
    load(release).save(into, source="test")
    monkeypatch.setenv(ENV, str(into))


def test_rogue_packages_are_refused_with_their_reason_and_the_good_ones_load(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path, centre_release: None
) -> None:
    home = central(tmp_path, keys)
    names = ["Z10001", "Z10002", "Z10003", "Z10004", "Z10005", "Z10006"]
    child, retired, bad_digit, two_faults, good, hiding = copies(
        clean_columnar_packages.packages, tmp_path / "in", names
    )
    _plant(child, keys, "clinical_events", "code", IVF_CHILD, rows=2)
    _plant(retired, keys, "referrals", "code", OLD_IVF)
    _plant(bad_digit, keys, "medications", "code", BAD_CHECK, rows=3)
    _plant(two_faults, keys, "immunisations", "vaccine_code", "12345")
    _plant(two_faults, keys, "allergies", "code", IVF)
    _plant(good, keys, "clinical_events", "code", UNKNOWN)  # valid, unknown: sent and loaded
    _hide(hiding, keys, "clinical_events", "code", IVF_CHILD)

    result = collect(home, [child, retired, bad_digit, two_faults, good, hiding])

    reasons = {r.folder.name: r.reason for r in result.refused}
    assert set(reasons) == {"Z10001", "Z10002", "Z10003", "Z10004", "Z10006"}
    assert f"clinical_events.code has 2 row(s) with {NEVER}" in reasons["Z10001"]
    assert f"referrals.code has 1 row(s) with {NEVER}" in reasons["Z10002"]
    assert "medications.code has 3 row(s) with not a valid SNOMED CT" in reasons["Z10003"]
    assert "immunisations.vaccine_code has 1 row(s) with not a valid" in reasons["Z10004"]
    assert f"allergies.code has 1 row(s) with {NEVER}" in reasons["Z10004"]
    assert "clinical_events.code holds a code of a set" in reasons["Z10006"]
    assert "though no row uses it" in reasons["Z10006"]
    for name, reason in reasons.items():
        assert "nothing of the package was loaded" in reason
        refused = next(r for r in result.refused if r.folder.name == name)
        assert refused.moved_to is not None
        assert reason in (refused.moved_to / REFUSED_NOTE).read_text()
        # The reason is published: it names no code and no set (which would tell of a patient).
        for secret in (IVF, IVF_CHILD, OLD_IVF, BAD_CHECK, "12345", "assisted", "conception"):
            assert secret not in reason
    # The practices made their packages with the embedded release; the centre's is newer.
    assert "another terminology release" in reasons["Z10001"]
    assert "another terminology release" not in reasons["Z10003"], "an invalid id is invalid"

    assert result.version is not None and result.version.number == 1
    assert [r.practice for r in result.loaded] == ["Z10005"]
    con = connect(Lake.open(home.lake_folder).snapshot())
    for table, column in (
        ("clinical_events", "code"),
        ("referrals", "code"),
        ("medications", "code"),
        ("allergies", "code"),
        ("immunisations", "vaccine_code"),
    ):
        held = con.sql(f"select distinct practice, {column} from {table}").fetchall()
        assert {practice for practice, _ in held} == {"Z10005"}
        planted = {IVF, IVF_CHILD, OLD_IVF, BAD_CHECK, "12345"}
        assert not planted & {code for _, code in held}
    events = con.sql(f"select count(*) from clinical_events where code = '{UNKNOWN}'").fetchall()
    assert events == [(1,)], "a valid code the release does not know is loaded"


def test_a_code_the_practice_listed_in_a_never_collected_set_is_refused_at_the_centre(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    """The practice's newer release put a concept in a restricted set that the centre's
    (embedded) release does not know: the manifest's expansion keeps it out all the same."""
    home = central(tmp_path, keys)
    [package] = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001"])
    manifest = orjson.loads((package / MANIFEST).read_bytes())
    manifest["terminology"]["code_sets"]["gender_reassignment"]["codes"].append(UNKNOWN)
    (package / MANIFEST).write_bytes(orjson.dumps(manifest))
    _plant(package, keys, "clinical_events", "code", UNKNOWN)

    result = collect(home, [package])

    [refused] = result.refused
    assert f"clinical_events.code has 1 row(s) with {NEVER}" in refused.reason
    assert "another terminology release" not in refused.reason, "both used the embedded one"
    assert not result.loaded and result.version is None
    version, tables = state(home)
    assert version == 0 and all(rows == 0 for rows, _ in tables.values()), "an empty lake"


def test_a_package_holds_no_never_collected_code_even_where_no_row_uses_it(
    clean_columnar_packages: Extracted,
) -> None:
    """The extractor drops the rows of restricted, sensitive and opt-out codes; the source's
    dictionary of codes must go with them, or the codes would still be in the file."""
    centre = CentreCodes.of(shipped(), active())
    never = set().union(*centre.never.values())
    left_out = 0
    for package in sorted(clean_columnar_packages.packages.iterdir()):
        if not package.is_dir():
            continue
        manifest = orjson.loads((package / MANIFEST).read_bytes())
        left_out += sum(
            n
            for counts in manifest["excluded_by_table"].values()
            for reason, n in counts.items()
            if reason.startswith(("restricted_code", "sensitive_code", "opt_out_code"))
        )
        for table, columns in centre.columns.items():
            read = pq.ParquetFile(package / f"{table}.parquet", read_dictionary=columns).read()
            for column in columns:
                for chunk in read[column].chunks:
                    assert not never & set(chunk.dictionary.to_pylist()), (package.name, table)
    assert left_out > 0, "the practices' records held such codes, and they were left out"


def _sctid_like() -> st.SearchStrategy[str]:
    """Mostly near-identifiers: digits, a partition that may be right, a check digit that may
    be, so that every rule of `parse` is exercised, and now and then anything at all."""
    body = st.text("0123456789", min_size=1, max_size=17)
    partition = st.sampled_from(["00", "10", "01", "11", "02", "20", "9", ""])
    fixed = st.booleans()

    @st.composite
    def near(draw: st.DrawFn) -> str:
        start = draw(body) + draw(partition)
        return start + check_digit(start) if draw(fixed) else start + draw(st.text("0123456789"))

    return st.one_of(near(), st.text(max_size=20))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.one_of(_sctid_like(), st.none()), max_size=40), st.integers(0, 5))
@example(["404684003", "827241000000103", "0404684003", "404684013", "١٢٣٤٥٦٧٨٩"], 1)
def test_the_column_check_agrees_with_the_identifier_rules(
    values: list[str | None], skip: int
) -> None:
    column = pa.array(values, pa.string()).slice(min(skip, len(values)))
    expected = [v is not None and is_concept_id(v) for v in values[skip:]]
    assert concept_mask(column).tolist() == expected


def test_a_lake_file_keeps_no_trace_of_a_row_filtered_out(tmp_path: Path) -> None:
    """Rows dropped from a dictionary-encoded column (a person opted out at load, or erased)
    leave the dictionary whole; what the lake writes holds only the values its rows use."""
    lake = Lake.open(tmp_path / "lake")
    people = pc.dictionary_encode(pa.array(["a" * 64, "b" * 64, "c" * 64]))
    rows = pa.table({"patient": people, "n": [1, 2, 3]}).filter(pa.array([True, False, True]))
    assert "b" * 64 in rows["patient"].chunks[0].dictionary.to_pylist()
    with lake.writing() as tx:
        tx.write("clinical_events", "Z10001", rows)
        tx.commit("load", {})
    [written] = (tmp_path / "lake").rglob("*.parquet")
    read = pq.ParquetFile(written, read_dictionary=["patient"]).read()
    assert read["patient"].to_pylist() == ["a" * 64, "c" * 64]
    assert read["patient"].chunks[0].dictionary.to_pylist() == ["a" * 64, "c" * 64]
