"""A definition published as readable text: written back from the graph as the query language,
it is the same question (run again as the language, it makes the same graph), each statement
carries the researcher's own file and line, and a study shipped inside the package (the demo's)
is placed in its own file, not in whatever frame ran it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpdpr.tre import runs
from gpdpr.tre.query import language
from gpdpr.tre.query.serial import from_json, to_json
from gpdpr.tre.query.text import definition_text, question_of, summary
from portal_home import MEASURED, STUDY

DIABETES = Path(language.__file__).parents[1] / "examples" / "diabetes" / "study.py"


def without_positions(document: bytes) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "at"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(document))


@pytest.mark.parametrize("text", [STUDY, MEASURED], ids=["table", "table-and-measure"])
def test_the_text_run_again_as_the_language_is_the_same_question(text: str, tmp_path: Path) -> None:
    (tmp_path / "study.py").write_text(text)
    document = runs.compile_file(tmp_path / "study.py")
    written = definition_text(from_json(document))
    again = tmp_path / "again.py"
    again.write_text("from gpdpr.tre.language import *\n" + written)
    assert without_positions(runs.compile_file(again)) == without_positions(document)


def test_each_statement_names_the_researchers_own_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "study.py").write_text(MEASURED)
    written = definition_text(from_json(runs.compile_file(tmp_path / "study.py")))
    lines = MEASURED.splitlines()
    positions = re.findall(r"# (\S+):(\d+)$", written, flags=re.M)
    assert {name for name, _ in positions} == {"study.py"}
    named = {int(line) for _, line in positions}
    for start in ("dataset.define_population", "dataset.add_table", "measures.define_measure"):
        assert any(lines[n - 1].startswith(start) for n in named), start
    for n in named:  # and never a line of anything else (a blank, an import, a comment)
        assert lines[n - 1].strip() and not lines[n - 1].startswith(("from", "#")), lines[n - 1]


def test_a_study_shipped_inside_the_package_is_placed_in_its_own_file() -> None:
    document = runs.compile_file(DIABETES)
    positions = set(re.findall(r'"at":"([^"]+)"', document.decode()))
    assert positions and all(p.startswith("study.py:") for p in positions), positions


def test_the_question_in_words() -> None:
    words = question_of(runs.compile_file(DIABETES))
    assert words is not None
    assert "how many people are in each group of sex and age band" in words
    assert "the rate hba1c checks each month for 24 months from 01 October 2024" in words
    assert question_of("{not a definition") is None
    assert summary(from_json(runs.compile_file(DIABETES))) == words
    text = definition_text(from_json(runs.compile_file(DIABETES)))
    assert "codelist_from_csv('type-2-diabetes.csv')" in text and "main.py" not in text


def test_to_json_is_what_the_text_is_made_from() -> None:
    # the published document and the graph agree: the text is made from the document alone
    document = runs.compile_file(DIABETES)
    assert without_positions(to_json(from_json(document))) == without_positions(document)
