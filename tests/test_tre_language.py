"""The query language and its JSON form: what a researcher writes is checked where they wrote
it, and what the service receives is checked again, whoever built it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from gpdpr.errors import UserError
from gpdpr.tre.query import limits, serial
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    case,
    clinical_events,
    codelist_from_csv,
    definition_of,
    medications,
    months,
    patients,
    practice_registrations,
    when,
    years,
)
from gpdpr.tre.runs import compile_file

HTN = ["38341003", "59621000"]  # hypertension, from the shipped catalogue


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def study(folder: Path, body: str) -> Path:
    """A definition file whose body is `body` (written at line 4 onwards)."""
    return write(
        folder,
        "study.py",
        "from gpdpr.tre.language import *\n\ndataset = Dataset()\n" + textwrap.dedent(body),
    )


def small() -> n.Definition:
    dataset = Dataset()
    dataset.define_population(patients.age_on("2024-01-01") >= 18)
    dataset.sex = patients.sex
    dataset.first_htn = (
        clinical_events.where(clinical_events.code.is_in(HTN))
        .sort_by(clinical_events.effective_date)
        .first_for_patient()
        .effective_date
    )
    dataset.band = case(
        when(patients.age_on("2024-01-01") < 65).then("under 65"), otherwise="65 and over"
    )
    dataset.add_table("by_sex", by=["sex", "band"])
    measures = Measures()
    measures.define_measure(
        "htn",
        numerator=clinical_events.where(
            clinical_events.code.is_in(HTN) & clinical_events.effective_date.is_during(INTERVAL)
        ).exists_for_patient(),
        denominator=practice_registrations.for_patient_on(INTERVAL.start_date).exists_for_patient(),
        group_by={"practice": practice_registrations.for_patient_on(INTERVAL.start_date).practice},
        intervals=months(12).starting_on("2023-01-01"),
    )
    return definition_of(dataset, measures)


# ---- the JSON form ---------------------------------------------------------------------------


def test_a_definition_survives_its_json_form_exactly() -> None:
    document = serial.to_json(small())
    again = serial.from_json(document)
    assert again == small()
    assert serial.to_json(again) == document


def test_the_same_expression_written_twice_is_one_node() -> None:
    document = orjson.loads(serial.to_json(small()))
    kinds = [node["node"] for node in document["nodes"]]
    # patients.age_on is written twice, the registration on the interval start twice
    assert kinds.count("SelectTable") == len(
        {n["name"] for n in document["nodes"] if "name" in n and n["node"] == "SelectTable"}
    )
    assert len(document["nodes"]) == len(
        {orjson.dumps({k: v for k, v in node.items() if k != "at"}) for node in document["nodes"]}
    )


def test_the_service_accepts_only_json_and_names_the_format() -> None:
    with pytest.raises(n.DefinitionError, match="not valid JSON"):
        serial.from_json(b"import os; os.system('rm -rf /')")
    with pytest.raises(n.DefinitionError, match="not a gpdpr-definition/1 definition"):
        serial.from_json(serial.to_json(small()).replace(b"gpdpr-definition/1", b"other/9"))


def tampered(change: Any) -> bytes:
    document = orjson.loads(serial.to_json(small()))
    change(document)
    return orjson.dumps(document)


def node_of(document: dict[str, Any], node_kind: str, **fields: Any) -> dict[str, Any]:
    return next(
        node
        for node in document["nodes"]
        if node["node"] == node_kind and all(node.get(k) == v for k, v in fields.items())
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # reach past the view: the lake's bookkeeping, or a column the TRE never shows
        (
            lambda d: node_of(d, "SelectTable", name="patients").update(name="_packages"),
            "there is no table '_packages'",
        ),
        (
            lambda d: node_of(d, "Column", name="sex").update(name="record_id"),
            "has no column 'record_id'",
        ),
        (
            lambda d: node_of(d, "Column", name="sex").update(name="sex; drop table x"),
            "has no column",
        ),
        # a type error planted in transit: a date compared with a number
        (
            lambda d: node_of(d, "Value", kind="date").update(kind="int", value=5),
            "needs a date, not a number",
        ),
        # structure: cycles, forward references, unknown kinds, extra or missing fields
        (lambda d: node_of(d, "Column", name="sex").update(frame=10_000), "not an earlier node"),
        (
            lambda d: d["nodes"][0].update(node="Python", code="print(1)"),
            "unknown kind of node 'Python'",
        ),
        (lambda d: node_of(d, "Column", name="sex").update(sql="select 1"), "unexpected sql"),
        (lambda d: node_of(d, "Column", name="sex").pop("frame"), "missing frame"),
        (
            lambda d: d.update(population=None),
            "aggregate tables need a dataset with `define_population`",
        ),
        (lambda d: d.update(disclosure="none"), "unknown disclosure control rule 'none'"),
        (
            lambda d: node_of(d, "IsIn").update(codes=["59621000", "999999999"]),
            "999999999 is not a SNOMED CT concept",
        ),
        (
            lambda d: node_of(d, "IsIn").update(codes=["93461009"]),
            "gender_reassignment code set, which is never collected",
        ),
        (lambda d: node_of(d, "IsIn").update(codes=["b", "a"]), "distinct and sorted"),
        (lambda d: d["measures"][0]["intervals"].update(count=0), "1 to 1200 intervals"),
        (lambda d: node_of(d, "Value", kind="str").update(value="x\u0000"), "printable"),
        (lambda d: node_of(d, "Apply", op="ge").update(op="exec"), "unknown operation 'exec'"),
        (
            lambda d: node_of(d, "Aggregate", op="exists").update(
                source=d["nodes"].index(node_of(d, "Value", kind="date"))
            ),
            "question about a frame",
        ),
    ],
)
def test_a_tampered_or_hand_built_graph_is_refused_before_anything_runs(
    change: Any, problem: str
) -> None:
    with pytest.raises(n.DefinitionError, match=problem):
        serial.from_json(tampered(change))


def test_a_graph_too_big_to_be_a_study_is_refused() -> None:
    document = orjson.loads(serial.to_json(small()))
    document["nodes"] = (
        document["nodes"]
        + [{"node": "IntervalDate", "which": "start", "at": None}] * limits.MAX_NODES
    )
    with pytest.raises(n.DefinitionError, match="at most 20,000"):
        serial.from_json(orjson.dumps(document))


# ---- errors at the researcher's line --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        ("dataset.bad = patients.date_of_birth > 5\n", 4, "cannot compare a date with a number"),
        (
            "dataset.bad = patients.sex > patients.date_of_birth\n",
            4,
            "cannot compare a text with a date",
        ),
        ("x = 1\ndataset.bad = patients.postcode\n", 5, "patients has no column 'postcode'"),
        (
            "dataset.bad = clinical_events.value + medications.quantity\n",
            4,
            "mixes values from frames whose rows do not line up",
        ),
        ("dataset.bad = clinical_events.value\n", 4, "many values per patient"),
        ("dataset.bad = patients.date_of_birth < 'yesterday'\n", 4, "'yesterday' is not a date"),
        ("if patients.sex == 'F':\n    pass\n", 4, "combine conditions with &"),
        (
            "dataset.bad = clinical_events.sort_by(clinical_events.code == '1')"
            ".first_for_patient().value\n",
            4,
            "sorting by a true/false value",
        ),
        ("dataset.bad = clinical_events.first_for_patient().value\n", 4, "sort the frame before"),
        (
            "dataset.bad = clinical_events.code.is_in(['123'])\n",
            4,
            "123 is not a SNOMED CT concept",
        ),
        (
            "dataset.bad = medications.where(medications.code.is_in(['59621000']))"
            ".exists_for_patient()\n",
            4,
            "not dmd codes",
        ),
        ("dataset.Bad = patients.sex\n", 4, "must be a lower-case letter"),
        (
            "dataset.bad = patients.sex.sum_for_patient()\n",
            4,
            "needs a column of a frame with many rows",
        ),
    ],
)
def test_a_mistake_is_reported_at_the_line_that_made_it(
    tmp_path: Path, body: str, line: int, problem: str
) -> None:
    with pytest.raises(UserError) as caught:
        compile_file(study(tmp_path, body))
    assert str(caught.value).startswith(f"study.py:{line}: ")
    assert problem in str(caught.value)


def test_an_error_in_the_researchers_own_python_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"study\.py:5: ZeroDivisionError"):
        compile_file(study(tmp_path, "x = 1\ny = 1 / 0\n"))
    with pytest.raises(UserError, match=r"study\.py:4: invalid syntax|study\.py:4: "):
        compile_file(study(tmp_path, "dataset.x = (\n"))


def test_a_definition_that_releases_nothing_is_refused(tmp_path: Path) -> None:
    path = study(
        tmp_path, "dataset.define_population(patients.sex == 'F')\ndataset.sex = patients.sex\n"
    )
    with pytest.raises(UserError, match="releases nothing"):
        compile_file(path)


def test_interval_belongs_to_measures_only(tmp_path: Path) -> None:
    path = study(
        tmp_path,
        """
        dataset.define_population(patients.date_of_birth < INTERVAL.start_date)
        dataset.sex = patients.sex
        dataset.add_table("t", by=["sex"])
        """,
    )
    with pytest.raises(UserError, match="uses INTERVAL, which only a measure has"):
        compile_file(path)


# ---- codelists -------------------------------------------------------------------------------


def test_a_codelist_csv_is_read_with_its_system(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "htn.csv",
        "code,term\n59621000,Essential hypertension\n38341003,Hypertensive disorder\n",
    )
    codelist = codelist_from_csv(path)
    assert codelist.codes == ("38341003", "59621000")
    assert codelist.system == "snomed"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "code,term\n59621000,ok\n12345,typo\n",
            r"htn\.csv: line 3: 12345 is not a SNOMED CT concept",
        ),
        (
            "code,term\n59621000,ok\n93461009,x\n",
            "line 3: 93461009 is in the gender_reassignment code set",
        ),
        ("name,term\n59621000,ok\n", "line 1: no code or dmd_id"),
        ("code,term\n59621000,ok\n,blank\n", "line 3: no code"),
        ("code,term\n", "has no codes"),
    ],
)
def test_a_bad_codelist_names_the_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem):
        codelist_from_csv(write(tmp_path, "htn.csv", text))


def test_a_codelist_is_read_relative_to_the_definition(tmp_path: Path) -> None:
    write(tmp_path, "htn.csv", "code\n59621000\n")
    path = study(
        tmp_path,
        """
        htn = codelist_from_csv("htn.csv")
        dataset.define_population(clinical_events.where(clinical_events.code.is_in(htn)).exists_for_patient())
        dataset.sex = patients.sex
        dataset.add_table("t", by=["sex"])
        """,
    )
    definition = serial.from_json(compile_file(path))
    assert any(
        isinstance(x, n.IsIn) and x.codelist == "htn.csv"
        for x in n.walk(definition.population)  # type: ignore[arg-type]
    )


def test_a_definition_in_a_subfolder_is_found_by_its_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gpdpr tre compile study/study.py` from the folder above: the file runs in its own folder
    (for its codelists) and is still found, and an error in it names its line."""
    (tmp_path / "study").mkdir()
    write(tmp_path / "study", "htn.csv", "code\n59621000\n")
    body = """
        htn = codelist_from_csv("htn.csv")
        dataset.define_population(clinical_events.where(clinical_events.code.is_in(htn)).exists_for_patient())
        dataset.sex = patients.sex
        dataset.add_table("t", by=["sex"])
        """
    study(tmp_path / "study", body)
    monkeypatch.chdir(tmp_path)
    definition = serial.from_json(compile_file(Path("study/study.py")))
    assert [name for name, _ in definition.variables] == ["sex"]
    study(tmp_path / "study", body + "dataset.age = patients.no_such_column\n")
    with pytest.raises(UserError, match=r"study\.py:9: patients has no column .no_such_column."):
        compile_file(Path("study/study.py"))


# ---- what definitions mean --------------------------------------------------------------------


def test_columns_used_are_what_the_agreement_is_asked_for() -> None:
    from gpdpr.tre.views import required_fields

    # Each table read needs its patient field and the field its period is checked on too.
    used = n.columns_used(small())
    assert required_fields(used) == {
        "clinical_events": ["code", "effective_date", "patient"],
        "patients": ["birth_month", "birth_year", "patient", "sex"],
        "registrations": ["end_date", "patient", "practice", "start_date"],
    }


def test_durations_shift_dates_by_calendar_units() -> None:
    shifted = (patients.date_of_birth + years(18)).node
    assert isinstance(shifted, n.Apply) and shifted.op == "add_years"
    assert (medications.issue_date - months(3)).node.args[1] == n.Value(-3, "int")  # type: ignore[attr-defined]
