"""An entry with no clinical date that says when it was entered into the record (`recordedDate`):
sent, for the resource types the reader allows it (fhir.DATED_BY_RECORDING), with its onset left
empty, never filled with the day it was recorded; its recorded time checked for plausibility as
the onset would be. Every other undated entry stays quarantined as "no date"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extracting import Keys, run, tables
from fhir_exports import ODS, SNOMED, coded, patient, subject, support, write
from gpdpr import spec as specification
from gpdpr.practice import fhir

SPEC = specification.shipped()


def allergy(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "clinicalStatus": coded("active", "http://terminology.hl7.org/CodeSystem/x"),
        "code": coded(SNOMED[0]),
        "patient": subject("p1"),
    } | extra


def condition(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "code": coded(SNOMED[1]),
        "subject": subject("p1"),
    } | extra


def observation(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": coded(SNOMED[1]),
        "subject": subject("p1"),
    } | extra


def test_only_types_of_whole_record_tables_may_go_undated() -> None:
    for kind in fhir.DATED_BY_RECORDING:
        table = fhir.TABLE_OF[kind]
        assert table not in SPEC.retention_tables
        assert "recorded_at" in [f.name for f in SPEC.tables[table].fields]


def test_an_entry_dated_only_by_its_recording_is_sent_without_an_onset(
    tmp_path: Path, keys: Keys
) -> None:
    resources = [
        *support(),
        patient("p1", 1),
        {
            "resourceType": "EpisodeOfCare",
            "id": "p1-reg",
            "status": "active",
            "type": [{"text": "Regular GP registration"}],
            "patient": subject("p1"),
            "period": {"start": "2001-02-03"},
        },
        allergy("a-recorded", recordedDate="2019-12-10T13:00:00+00:00"),
        allergy("a-month", recordedDate="2018-04"),
        allergy("a-none"),
        allergy("a-future", recordedDate="2999-01-01"),
        allergy("a-before-1900", recordedDate="1850-01-01"),
        allergy("a-bad", recordedDate="last spring"),
        condition("c-recorded", recordedDate="2021-05-06"),
        condition("c-dated", onsetDateTime="2010-01-01", recordedDate="2021-05-06"),
        # An observation's `issued` is when a result was released, not an entry in the record.
        observation("o-issued", issued="2020-03-04T09:00:00Z"),
    ]
    folder = write(tmp_path / "export" / ODS, resources)
    manifest = run(folder, tmp_path / "package", keys)
    sent = tables(tmp_path / "package")

    allergies = sent["allergies"].to_pylist()
    assert len(allergies) == 2
    by_recorded = {str(r["recorded_at"])[:10]: r for r in allergies}
    assert set(by_recorded) == {"2019-12-10", "2018-04-01"}
    for row in allergies:
        assert row["onset_date"] is None and row["onset_date_precision"] is None
    assert by_recorded["2018-04-01"]["recorded_at_precision"] == "month"

    events = sent["clinical_events"].to_pylist()
    assert sorted(str(r["effective_date"]) for r in events) == ["2010-01-01", "None"]
    assert all(str(r["recorded_at"])[:10] == "2021-05-06" for r in events)

    # a-none and o-issued have no date; a recordedDate not a date at all is quarantined as
    # such, never sent undated; the recordings in the future and in 1850 are implausible.
    assert manifest["quarantined"]["by_reason"] == {
        "no date": 2,
        "a date or time that cannot be read": 1,
        "implausible date (before birth, before 1900 or after the extract)": 2,
    }
