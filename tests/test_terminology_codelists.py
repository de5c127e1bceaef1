"""OpenCodelists CSV files of real codes load in the research environment: a valid code the loaded
release does not know is a warning naming it, never a refusal; a code that is not an identifier,
or that the specification never collects (by meaning), is still refused by its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpdpr.errors import UserError
from gpdpr.tre.query.codelists import UnknownCodesWarning, check_for_column, codelist_from_csv

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
