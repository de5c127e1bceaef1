"""Releases loaded from RF2, ECL expanded over them, and the specification's code sets by meaning:
a child concept of a restricted concept is removed, and an inactive dissent concept with a
replacement is honoured, by the extractor itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from extracting import Keys
from fhir_exports import ukcore_with
from gpdpr.cli import app
from gpdpr.errors import UserError
from gpdpr.spec import shipped
from gpdpr.terminology import ecl, embedded, sets, store
from gpdpr.terminology.rf2 import KINDS, REPLACED_BY
from gpdpr.terminology.sctid import check_digit

ROOT, FINDING, PROCEDURE = "138875005", "404684003", "71388002"
IVF, DISSENT, WITHDRAWN = "52637005", "827241000000103", "827261000000102"


def made(item: int) -> str:
    """A valid concept id no real release has (short format, partition 00)."""
    body = f"{item}00"
    return body + check_digit(body)


IVF_CHILD = made(9100001)  # a kind of IVF the specification never names
OLD_DISSENT = made(9100002)  # an inactive dissent concept, REPLACED BY the current one
REFSET = made(9100003)
HEADACHE = made(9100004)


def write_release(folder: Path) -> Path:
    """A small RF2 Snapshot: a hierarchy, an inactive concept with its replacement, a refset."""
    folder.mkdir(parents=True)
    concepts = [
        (ROOT, ""),
        (FINDING, ROOT),
        (PROCEDURE, ROOT),
        (IVF, PROCEDURE),
        (IVF_CHILD, IVF),
        (DISSENT, FINDING),
        (WITHDRAWN, FINDING),
        (REFSET, ROOT),
        (HEADACHE, FINDING),
    ]
    head = ["20260101", "1", "900000000207008"]
    rows = {
        "concepts": [[c, *head, "900000000000074008"] for c, _ in concepts]
        + [[OLD_DISSENT, "20260101", "0", "900000000207008", "900000000000074008"]],
        "descriptions": [
            [str(n), *head, c, "en", "900000000000013009", f'term {c} "quoted"', "x"]
            for n, (c, _) in enumerate(concepts, start=1)
        ],
        "relationships": [
            [str(n), *head, c, p, "0", "116680003", "900000000000011006", "x"]
            for n, (c, p) in enumerate(concepts, start=1)
            if p
        ]
        # An inactive is-a is history, not hierarchy.
        + [["99", "20260101", "0", "900000000207008", HEADACHE, IVF, "0", "116680003", "x", "x"]],
        "refsets": [[f"u{n}", *head, REFSET, c] for n, c in enumerate([IVF, HEADACHE], start=1)],
        "associations": [["a1", *head, str(REPLACED_BY), OLD_DISSENT, DISSENT]],
    }
    for kind, lines in rows.items():
        spec = KINDS[kind]
        text = "\r\n".join(["\t".join(spec.columns)] + ["\t".join(line) for line in lines])
        (folder / f"{spec.pattern}_TEST_20260101.txt").write_text(text + "\r\n")
    return folder


@pytest.fixture
def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> store.Release:
    """The test release, loaded with the command a user runs, and made the one in use."""
    into = tmp_path / "store"
    result = CliRunner().invoke(
        app, ["terminology", "load", str(write_release(tmp_path / "rf2")), "--into", str(into)]
    )
    assert result.exit_code == 0, result.output
    assert "10 concepts" in result.output
    monkeypatch.setenv(store.ENV, str(into))
    return store.active()


def codes(expression: str, release: store.Release) -> set[str]:
    return {str(c) for c in ecl.expand(expression, release)}


def test_ecl_operators_over_a_loaded_release(loaded: store.Release) -> None:
    assert loaded.name == "SNOMED CT TEST" and loaded.version == "20260101"
    assert codes(f"<< {IVF}", loaded) == {IVF, IVF_CHILD}
    assert codes(f"< {IVF} |In vitro fertilisation|", loaded) == {IVF_CHILD}
    assert codes(f"> {IVF_CHILD}", loaded) == {IVF, PROCEDURE, ROOT}
    assert codes(f">! {IVF_CHILD}", loaded) == {IVF}
    assert codes(f"<! {ROOT}", loaded) == {FINDING, PROCEDURE, REFSET}
    assert codes(f"< {FINDING} OR < {PROCEDURE}", loaded) == {
        DISSENT,
        WITHDRAWN,
        HEADACHE,
        IVF,
        IVF_CHILD,
    }
    assert codes(f"<< {PROCEDURE} AND ^ {REFSET}", loaded) == {IVF}
    assert codes(f"< {ROOT} MINUS (<< {FINDING} OR << {PROCEDURE})", loaded) == {REFSET}
    assert codes(f"descendantOrSelfOf (memberOf {REFSET})", loaded) == {IVF, IVF_CHILD, HEADACHE}
    assert codes(f"< {FINDING}, < {ROOT}", loaded) == {DISSENT, WITHDRAWN, HEADACHE}


def test_ecl_that_cannot_be_read_says_where() -> None:
    with pytest.raises(UserError, match="AND and OR together need brackets"):
        ecl.parse(f"<< {IVF} AND << {FINDING} OR << {ROOT}")
    with pytest.raises(UserError, match=r"at character 14: refinements \(:\) are not supported"):
        ecl.parse(f"<< {FINDING} : 363698007 = *")
    with pytest.raises(UserError, match="check digit is wrong"):
        ecl.parse("<< 404684004")
    with pytest.raises(UserError, match="ends too soon"):
        ecl.parse(f"<< ({FINDING}")


def test_code_sets_follow_the_hierarchy_and_the_history(loaded: store.Release) -> None:
    spec = shipped()
    excluded = spec.excluded_codes()
    assert excluded[IVF_CHILD] == "assisted_conception"
    assert OLD_DISSENT in spec.dissent_codes()
    assert spec.dissent_codes().isdisjoint(spec.withdrawal_codes())
    # An expression naming the inactive concept stands for its replacement too.
    assert sets.expand(f"<< {OLD_DISSENT}", loaded) == {OLD_DISSENT, DISSENT}


def test_the_extractor_removes_by_meaning(
    loaded: store.Release, tmp_path: Path, keys: Keys
) -> None:
    before = ukcore_with(tmp_path / "before", keys, [])
    assert before["type1_opt_out"]["active"] == []
    restricted = ukcore_with(tmp_path / "restricted", keys, [(IVF_CHILD, "ivf-child")])
    events = restricted["tables"]["clinical_events"]["rows"]
    assert events == before["tables"]["clinical_events"]["rows"]
    by_table = restricted["excluded_by_table"]["clinical_events"]
    assert by_table["restricted_code:assisted_conception"] == 1
    assert restricted["terminology"]["name"] == "SNOMED CT TEST"
    code_set = restricted["terminology"]["code_sets"]["assisted_conception"]
    # IVF, its child, and Artificial insemination: named, so kept out though this release lacks it
    assert code_set["concepts"] == 3 and code_set["ecl"].startswith(f"<< {IVF}")

    dissent = ukcore_with(tmp_path / "dissent", keys, [(OLD_DISSENT, "old-dissent")])
    assert len(dissent["type1_opt_out"]["active"]) == 1
    assert dissent["terminology"]["code_sets"]["type1_dissent"]["concepts"] == 2


def test_a_store_reads_back_as_it_was_written(loaded: store.Release, tmp_path: Path) -> None:
    again = store.load(tmp_path / "rf2")
    assert again.ids.tolist() == loaded.ids.tolist()
    assert again.active.tolist() == loaded.active.tolist()
    assert again.isa.num_rows == loaded.isa.num_rows == 8  # the inactive is-a left out
    assert loaded.term(int(IVF)) == f'term {IVF} "quoted"'
    # The opened store uses the hierarchy index it was saved with; it agrees with one rebuilt.
    assert "_down" in loaded.__dict__ and "_down" not in again.__dict__
    top = np.array([int(ROOT)], np.int64)
    assert loaded.descendants(top).tolist() == again.descendants(top).tolist()
    assert len(loaded.descendants(top)) == 8


def test_a_damaged_release_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = write_release(tmp_path / "rf2")
    concept_file = next(folder.glob("sct2_Concept_*"))
    concept_file.write_text("id\teffectiveTime\tactive\r\n1\t2\t3\r\n")
    with pytest.raises(UserError, match=r"sct2_Concept_Snapshot_TEST_20260101.txt, line 1"):
        store.load(folder)
    concept_file.write_text(
        "\t".join(KINDS["concepts"].columns) + f"\r\n{ROOT}\t20260101\tyes\tx\tx\r\n"
    )
    with pytest.raises(UserError, match="cannot be read as RF2"):
        store.load(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no sct2_Concept_Snapshot"):
        store.load(tmp_path / "empty")


def test_the_embedded_release_is_what_its_sources_make(tmp_path: Path) -> None:
    embedded.write(tmp_path / "release")
    shipped_folder = Path(embedded.__file__).parent / "release"
    names = sorted(p.name for p in shipped_folder.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "release").iterdir())
    for name in names:
        assert (shipped_folder / name).read_bytes() == (tmp_path / "release" / name).read_bytes()
    release = store.embedded()
    # Every code the specification names is in it, under its hierarchy.
    spec = shipped()
    named = {c.code for s in spec.code_sets.values() for c in s.codes}
    assert release.knows(np.array(sorted(named, key=int), np.int64)).all()
    assert "8098009" not in spec.excluded_codes()  # the grouping concept itself is not listed
    assert {"105629000", "266113007"} <= set(spec.excluded_codes())


def test_a_national_edition_is_found_by_its_file_names(tmp_path: Path) -> None:
    """The UK edition names its files sct2_Concept_UKCLSnapshot_GB1000000_<date>.txt, under
    Snapshot/Terminology/ beside Full/ and Delta/ folders that must not be read."""
    folder = write_release(tmp_path / "international")
    uk = tmp_path / "SnomedCT_UKClinicalRF2" / "Snapshot" / "Terminology"
    uk.mkdir(parents=True)
    for path in folder.iterdir():
        name = path.name.replace("Snapshot", "UKCLSnapshot").replace("_TEST_", "_GB1000000_")
        path.rename(uk / name)
    full = tmp_path / "SnomedCT_UKClinicalRF2" / "Full" / "sct2_Concept_Full_GB1000000_20260101.txt"
    full.parent.mkdir()
    full.write_text("not read\r\n")
    release = store.load(tmp_path / "SnomedCT_UKClinicalRF2")
    assert release.name == "SNOMED CT GB1000000" and release.ids.size == 10
