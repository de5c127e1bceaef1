"""OpenCodelists CSV files of real codes load in the research environment: a valid code the loaded
release does not know is a warning naming it, never a refusal; a code that is not an identifier,
or that the specification never collects (by meaning), is still refused by its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpdpr.errors import UserError
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query import serial
from gpdpr.tre.query.codelists import (
    NeverCollectedWarning,
    UnknownCodesWarning,
    check_for_column,
    codelist_from_csv,
    codelist_from_ecl,
)
from gpdpr.tre.query.text import definition_text
from gpdpr.tre.runs import compile_file
from terminology_release import (
    DISSENT,
    FINDING,
    HEADACHE,
    IVF,
    OLD_DISSENT,
    PROCEDURE,
    WITHDRAWN,
    made,
    use_release,
)
from tre_data import by_id, column, engine, make_views

# opensafely/asthma-diagnosis-snomed as OpenCodelists downloads it: code and term columns.
ASTHMA = """code,term
195967001,Asthma
233678006,Childhood asthma
266361008,Non-allergic asthma
389145006,Allergic asthma
304527002,Acute asthma
370218001,Mild asthma
370219009,Moderate asthma
370220003,Occasional asthma
370221004,Severe asthma
"""


def test_a_real_asthma_codelist_loads_and_names_what_the_release_lacks(tmp_path: Path) -> None:
    path = tmp_path / "asthma.csv"
    path.write_text(ASTHMA)
    with pytest.warns(UnknownCodesWarning) as caught:
        codelist = codelist_from_csv(path)
    assert len(codelist.codes) == 9 and codelist.system == "snomed"
    message = str(caught[0].message)
    unknown = [line.split(",")[0] for line in ASTHMA.splitlines()[2:]]
    assert all(code in message for code in unknown) and "195967001" not in message
    assert "are valid but not in the loaded terminology release" in message


def test_a_codelist_by_any_column_name_with_or_without_descriptions(tmp_path: Path) -> None:
    bare = tmp_path / "bare.csv"
    bare.write_text("ctv3_id,snomed_concept\nXaIP4,59621000\nG2...,38341003\n")
    assert codelist_from_csv(bare, column="snomed_concept").codes == ("38341003", "59621000")
    with pytest.raises(
        UserError, match=r"bare.csv, line 1: no code or dmd_id or snomedct_id or id"
    ):
        codelist_from_csv(bare)
    with pytest.raises(UserError, match="line 2: XaIP4 is not a SNOMED CT concept"):
        codelist_from_csv(bare, column="ctv3_id")


def test_a_dmd_codelist_by_its_column(tmp_path: Path) -> None:
    path = tmp_path / "salbutamol.csv"
    # A product the catalogue has, and a valid dm+d id (UK drug extension namespace) it lacks.
    path.write_text(
        "dmd_type,dmd_id,dmd_name\nVMP,39113611000001102,Salbutamol\nVMP,39113711000001106,x\n"
    )
    with pytest.warns(UnknownCodesWarning, match="39113711000001106"):
        codelist = codelist_from_csv(path)
    assert codelist.system == "dmd"
    with pytest.warns(UnknownCodesWarning), pytest.raises(UserError, match="not snomed codes"):
        check_for_column(codelist.codes, "snomed", codelist.source)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            "195967002,typo",
            r"line 3: 195967002 is not a SNOMED CT concept or dm\+d product "
            r"identifier \(its check digit is wrong",
        ),
        ("195967017,a description id", "it is a description identifier"),
        ("407377005,restricted", "line 3: 407377005 is in the gender_reassignment code set"),
    ],
)
def test_what_cannot_be_a_code_is_still_refused(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "asthma.csv"
    path.write_text(f"code,term\n195967001,Asthma\n{row}\n")
    with pytest.raises(UserError, match=problem):
        codelist_from_csv(path)


# ---- codelists by meaning (ECL) --------------------------------------------------------------


@pytest.fixture
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_release(tmp_path, monkeypatch)


def test_a_codelist_by_ecl_is_the_expansion_in_the_loaded_release(release: None) -> None:
    codelist = codelist_from_ecl(f"<<  {FINDING}   |Clinical finding|")
    # The retired dissent concept is in: the release says the current one replaced it.
    assert codelist.codes == tuple(sorted([FINDING, DISSENT, WITHDRAWN, HEADACHE, OLD_DISSENT]))
    assert codelist.system == "snomed"
    assert codelist.source == f"ECL << {FINDING} |Clinical finding| in SNOMED CT TEST 20260101"


def test_what_an_ecl_codelist_takes_in_that_is_never_collected_is_left_out_and_said(
    release: None,
) -> None:
    with pytest.warns(NeverCollectedWarning, match=r"2 of its concepts .* \(assisted_conception"):
        codelist = codelist_from_ecl(f"<< {PROCEDURE}")
    assert codelist.codes == (PROCEDURE,)
    with (
        pytest.raises(UserError, match="stands for no concept that is collected"),
        pytest.warns(NeverCollectedWarning),
    ):
        codelist_from_ecl(f"<< {IVF}")


def test_an_ecl_codelist_is_checked_as_a_listed_one_is(release: None) -> None:
    unknown = made(9100077)
    with pytest.warns(UnknownCodesWarning, match=f"{unknown} is valid but not in the loaded"):
        assert codelist_from_ecl(f"<< {unknown}").codes == (unknown,)
    with pytest.raises(UserError, match="check digit is wrong"):
        codelist_from_ecl("<< 404684004")
    with pytest.raises(UserError, match=r"refinements \(:\) are not supported"):
        codelist_from_ecl(f"<< {FINDING} : 363698007 = *")
    with pytest.raises(UserError, match="these are snomed codes, not dmd"):
        codelist_from_ecl(f"<< {FINDING}", system="dmd")


def test_an_ecl_codelist_travels_with_the_definition_and_runs(
    release: None, tmp_path: Path
) -> None:
    """Compiled once: the expansion is in the definition, and the run (DuckDB) matches those
    codes; the definition's text shows the expression it came from."""
    study = tmp_path / "study.py"
    study.write_text(
        "from gpdpr.tre.language import *\n\n"
        f"findings = codelist_from_ecl('< {FINDING} |Clinical finding|')\n"
        "dataset = Dataset()\n"
        "dataset.define_population(patients.exists_for_patient())\n"
        "dataset.found = clinical_events.where(clinical_events.code.is_in(findings))"
        ".count_for_patient()\n"
        "dataset.add_table('t', by=['found'])\n"
    )
    definition = serial.from_json(compile_file(study))
    (is_in,) = [x for x in n.walk(*n.roots(definition)) if isinstance(x, n.IsIn)]
    assert is_in.codes == tuple(sorted([DISSENT, WITHDRAWN, HEADACHE, OLD_DISSENT]))
    assert f"codelist_from_ecl('< {FINDING} |Clinical finding|')" in definition_text(definition)
    views = make_views(
        patients=[{"patient_id": "p1"}, {"patient_id": "p2"}],
        clinical_events=[
            {"patient_id": "p1", "code": HEADACHE},
            {"patient_id": "p1", "code": OLD_DISSENT},
            {"patient_id": "p1", "code": FINDING},  # not < itself
            {"patient_id": "p2", "code": PROCEDURE},
        ],
    )
    results = by_id(engine("duckdb").run(definition, views), views)
    assert column(results, "found") == {"p1": 2, "p2": 0}
