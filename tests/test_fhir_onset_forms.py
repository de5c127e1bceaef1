"""Dates given as an age, a range of ages or words (`onset[x]`, `performed[x]`, `occurrence[x]`):
an age becomes the month or year it honestly falls in, never the day (which would give back the
day of birth); words and ages too vague for one month or year give no date, the record is
quarantined naming the element, and nothing of the words leaves."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from extracting import Keys, run, tables
from fhir_exports import ODS, patient, records, support, write
from fhir_scan import hits
from gpdpr.practice import fhir_ages
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.rules import DATE_FORM, REASONS
from gpdpr.terminology import UCUM_SYSTEM

CANARY = "CANARYONSET7731"


def age(value: float, code: str = "a", **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": f"{CANARY} units", "system": UCUM_SYSTEM, "code": code} | extra


# Patient -> (birth date, their Condition's onset, what leaves: (date, precision) or the
# quarantined element's path).
FORMS: dict[str, tuple[str | None, dict[str, Any], tuple[date, str] | str]] = {
    # 3 days old: 20 or 21 May; the month, never the day.
    "p1": ("1970-05-17", {"onsetAge": age(3, "d")}, (date(1970, 5, 1), "month")),
    # 0 days old is the day of birth itself: only its month leaves.
    "p2": ("1970-05-17", {"onsetAge": age(0, "d")}, (date(1970, 5, 1), "month")),
    # 45 years from 17 May 1970 is any day from 17 May 2015 to 16 May 2016: no one year.
    "p3": ("1970-05-17", {"onsetAge": age(45)}, "Condition.onsetAge"),
    # Even born on 1 January, age 45 lasts until the hour of birth on 1 January 2016.
    "p4": ("1970-01-01", {"onsetAge": age(45)}, "Condition.onsetAge"),
    # 2 months: July or August 1970, so 1970, although 1 January 1970 is before the birth.
    "p5": ("1970-05-17", {"onsetAge": age(2, "mo")}, (date(1970, 1, 1), "year")),
    # A birth date known only to its year makes a year of age span two years.
    "p6": ("1970", {"onsetAge": age(45)}, "Condition.onsetAge"),
    # Ages 3 to 4 months for a child born on 1 May: August to September.
    "p7": (
        "1970-05-01",
        {"onsetRange": {"low": age(3, "mo"), "high": age(4, "mo")}},
        (date(1970, 1, 1), "year"),
    ),
    # A bound, not an age.
    "p8": ("1970-05-17", {"onsetAge": age(3, "d", comparator="<")}, "Condition.onsetAge"),
    # A unit in words only, not one of UCUM's units of time.
    "p9": (
        "1970-05-17",
        {"onsetAge": {"value": 3, "unit": f"{CANARY} days"}},
        "Condition.onsetAge",
    ),
    # An open range, and a range across kinds of unit.
    "p10": ("1970-05-17", {"onsetRange": {"low": age(3, "d")}}, "Condition.onsetRange"),
    "p11": (
        "1970-05-17",
        {"onsetRange": {"low": age(3, "d"), "high": age(1, "mo")}},
        "Condition.onsetRange",
    ),
    # Words: never copied, no date guessed.
    "p12": ("1970-05-17", {"onsetString": f"{CANARY} in childhood"}, "Condition.onsetString"),
    # No birth date to count an age from.
    "p13": (None, {"onsetAge": age(3, "d")}, "Condition.onsetAge"),
    # An age beyond any person's.
    "p14": ("1970-05-17", {"onsetAge": age(400)}, "Condition.onsetAge"),
}


def practice_with_forms() -> list[dict[str, Any]]:
    out = support()
    for n, (pid, (birth, onset, _)) in enumerate(FORMS.items(), start=1):
        person = patient(pid, n)
        if birth is None:
            del person["birthDate"]
        else:
            person["birthDate"] = birth
        out.append(person)
        for r in records(pid):
            if r["resourceType"] == "Condition":
                del r["onsetDateTime"]
                r.update(onset)
            out.append(r)
    return out


def test_each_form_of_an_onset_leaves_as_the_month_or_year_it_falls_in_or_not_at_all(
    tmp_path: Path, keys: Keys
) -> None:
    folder = write(tmp_path / "export" / ODS, practice_with_forms())
    manifest = run(folder, tmp_path / "package", keys)
    written = tables(tmp_path / "package")
    conditions = [r for r in written["clinical_events"].to_pylist() if r["category"] == "condition"]
    sent = sorted((r["effective_date"], r["effective_date_precision"]) for r in conditions)
    expected = sorted(v for _, _, v in FORMS.values() if isinstance(v, tuple))
    assert sent == expected
    assert all(r["effective_date_precision"] != "day" for r in conditions)

    held = [
        orjson.loads(line)
        for line in quarantine_path(tmp_path / "package").read_bytes().splitlines()
    ]
    quarantined = {e["record_id"]: e for e in held}
    paths = {f"{pid}-c": v for pid, (_, _, v) in FORMS.items() if isinstance(v, str)}
    assert {rid: quarantined[rid]["path"] for rid in paths} == paths
    assert {quarantined[rid]["reason"] for rid in paths} == {REASONS[DATE_FORM]}
    assert manifest["quarantined"]["by_reason"][REASONS[DATE_FORM]] == len(paths)
    # Only the Conditions were given in these forms: every other record of theirs is sent.
    assert set(quarantined) == set(paths)

    assert hits(tmp_path / "package", [CANARY]) == []
    assert CANARY.lower() not in quarantine_path(tmp_path / "package").read_text().lower()


def test_an_allergy_procedure_or_vaccination_given_in_words_is_quarantined_without_them(
    tmp_path: Path, keys: Keys
) -> None:
    resources = [*support(), patient("p1", 1)]
    words: dict[str, tuple[str, dict[str, Any]]] = {
        "p1-a": ("onsetDateTime", {"onsetString": f"{CANARY} as a child"}),
        "p1-p": ("performedDateTime", {"performedString": f"{CANARY} last spring"}),
        "p1-i": ("occurrenceDateTime", {"occurrenceString": f"{CANARY} at school"}),
        "p1-o": ("effectiveDateTime", {"effectiveTiming": {"code": {"text": CANARY}}}),
    }
    for r in records("p1"):
        if r["id"] in words:
            given, replacement = words[r["id"]]
            r.pop(given, None)
            r.update(replacement)
        resources.append(r)
    folder = write(tmp_path / "export" / ODS, resources)
    run(folder, tmp_path / "package", keys)
    held = quarantine_path(tmp_path / "package").read_bytes().splitlines()
    paths = {e["record_id"]: e["path"] for e in map(orjson.loads, held)}
    assert paths == {
        "p1-a": "AllergyIntolerance.onsetString",
        "p1-p": "Procedure.performedString",
        "p1-i": "Immunization.occurrenceString",
        "p1-o": "Observation.effectiveTiming",
    }
    assert hits(tmp_path / "package", [CANARY]) == []


def test_a_procedure_performed_at_an_age_is_sent_at_its_month(tmp_path: Path, keys: Keys) -> None:
    resources = [*support(), patient("p1", 1)]
    for r in records("p1"):
        if r["id"] == "p1-p":
            del r["performedDateTime"]
            r["performedAge"] = age(10, "d")  # born 17 May 1970: 27 or 28 May
        resources.append(r)
    run(write(tmp_path / "export" / ODS, resources), tmp_path / "package", keys)
    events = tables(tmp_path / "package")["clinical_events"].to_pylist()
    procedure = next(r for r in events if r["category"] == "procedure")
    assert (procedure["effective_date"], procedure["effective_date_precision"]) == (
        date(1970, 5, 1),
        "month",
    )


@pytest.mark.parametrize(
    ("birth", "given", "expected"),
    [
        ("2020-01-31", age(1, "mo"), "2020"),  # 29 February to 31 March
        ("2020-02-01", age(0, "mo"), "2020"),  # to the day before 1 month, 1 March
        ("2020-04-01", age(0, "d"), "2020-04"),
        ("2019-12-31", age(1, "d"), "2020-01"),  # 1 or 2 January
        ("2019-12-30", age(1, "d"), None),  # 31 December or 1 January
        ("2020-03", age(5, "h"), "2020"),  # born at any time in March: to 1 April
        ("2020-03-10", age(5, "h"), "2020-03"),
        ("2020-03", age(2, "wk"), "2020"),
        ("not a date", age(2, "wk"), None),
    ],
)
def test_the_span_an_age_allows(birth: str, given: dict[str, Any], expected: str | None) -> None:
    span = fhir_ages.age(given, "Condition.onsetAge")
    assert isinstance(span, fhir_ages.AgeSpan)
    found = fhir_ages.date_of(span, birth)
    assert (found if isinstance(found, str) else None) == expected
