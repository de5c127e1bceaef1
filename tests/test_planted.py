"""What the data specification must later remove is there, at the stated rates, in both formats."""

from __future__ import annotations

import re
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import Made
from gpdpr.identifiers import is_test_range_nhs_number
from gpdpr.synth.params import load_params
from gpdpr.terminology import load_catalogue
from readers import FhirOutput, read_columnar

PARAMS = load_params()
POSTCODE = re.compile(r"^[A-Z]{1,2}\d{1,2} \d[A-Z]{2}$")


def codes(key: str) -> set[str]:
    return {c.code for c in load_catalogue().codes(key)}


@pytest.fixture(scope="module")
def big(nation_50k: Made) -> dict[str, pa.Table]:
    return read_columnar(nation_50k.root)


def test_every_patient_carries_identifiers_in_clear(big: dict[str, pa.Table]) -> None:
    patients = big["patients"].to_pydict()
    n = len(patients["nhs_number"])
    assert all(is_test_range_nhs_number(x) for x in patients["nhs_number"])
    assert all(patients["given_name"]) and all(patients["family_name"])
    assert all(POSTCODE.match(p) for p in patients["postcode"])
    assert all(re.match(r"^\d+ \w", a) for a in patients["address_line_1"])
    assert all(isinstance(d, date) for d in patients["date_of_birth"])
    phones = sum(p is not None for p in patients["phone"]) / n
    emails = sum(e is not None for e in patients["email"]) / n
    assert abs(phones - PARAMS.phone_recorded) < 0.02
    assert abs(emails - PARAMS.email_recorded) < 0.02
    assert all(
        e.endswith(("@example.com", "@example.org", "@example.net")) for e in patients["email"] if e
    )


def test_free_text_notes_at_the_stated_rate_some_naming_people_and_nhs_numbers(
    big: dict[str, pa.Table],
) -> None:
    events = big["clinical_events"]
    clinical = events.filter(pc.invert(pc.equal(events["category"], "observation")))
    notes = [t for t in clinical["free_text"].to_pylist() if t]
    rate = len(notes) / clinical.num_rows
    assert abs(rate - PARAMS.free_text["note_rate"]) < 0.01
    with_names = sum(t.startswith("Attended with") for t in notes) / len(notes)
    assert abs(with_names - PARAMS.free_text["name_in_note"]) < 0.05
    nhs_in_notes = [
        m.group(1).replace(" ", "") for t in notes if (m := re.search(r"NHS no ([\d ]{12})", t))
    ]
    assert len(nhs_in_notes) > 50
    known = set(big["patients"]["nhs_number"].to_pylist())
    assert set(nhs_in_notes) <= known
    assert any(re.search(r"Contact on 0\d", t) for t in notes)
    assert [t for t in big["medications"]["free_text"].to_pylist() if t]
    assert [t for t in big["referrals"]["free_text"].to_pylist() if t]


def _people_with(big: dict[str, pa.Table], key: str) -> int:
    events = big["clinical_events"]
    hit = events.filter(pc.is_in(events["code"], value_set=pa.array(sorted(codes(key)))))
    joined = hit.join(big["patients"], keys=["ods", "patient_id"])
    return len(set(joined["nhs_number"].to_pylist()))


@pytest.mark.parametrize(
    ("key", "share", "low", "high"),
    [
        ("restricted.ivf", PARAMS.restricted["ivf"].share, 0.6, 1.2),
        (
            "restricted.gender_reassignment",
            PARAMS.restricted["gender_reassignment"].share,
            0.4,
            1.6,
        ),
        ("sensitive.sti", PARAMS.sensitive["sti"].share, 0.6, 1.2),
        ("sensitive.top", PARAMS.sensitive["top"].share, 0.6, 1.2),
    ],
)
def test_restricted_and_sensitive_codes_are_planted_at_their_rates(
    big: dict[str, pa.Table], key: str, share: float, low: float, high: float
) -> None:
    people = len(set(big["patients"]["nhs_number"].to_pylist()))
    found = _people_with(big, key) / people
    # Episodes falling in a gap between registrations are lost, as in life: hence the lower bound.
    assert low * share <= found <= high * share, f"{key}: {found:.4%} of people, asked {share:.4%}"


def test_type1_dissent_in_about_three_percent_a_fifth_later_withdrawn(
    big: dict[str, pa.Table],
) -> None:
    events = big["clinical_events"].join(big["patients"], keys=["ods", "patient_id"])
    rows = events.filter(
        pc.is_in(
            events["code"],
            value_set=pa.array(
                sorted(codes("optout.type1_dissent") | codes("optout.type1_withdrawn"))
            ),
        )
    ).to_pydict()
    dissent = set(codes("optout.type1_dissent"))
    first_dissent: dict[str, date] = {}
    withdrawn: dict[str, date] = {}
    for nhs, code, day in zip(
        rows["nhs_number"], rows["code"], rows["effective_date"], strict=True
    ):
        if day.year < 2000:  # a planted placeholder date
            continue
        target = first_dissent if code in dissent else withdrawn
        target[nhs] = min(day, target.get(nhs, day))
    people = len(set(big["patients"]["nhs_number"].to_pylist()))
    assert abs(len(first_dissent) / people - PARAMS.type1_share) < 0.004
    assert abs(len(withdrawn) / len(first_dissent) - PARAMS.type1_withdrawn_share) < 0.05
    assert all(withdrawn[n] > first_dissent[n] for n in withdrawn if n in first_dissent)
    assert min(first_dissent.values()) >= PARAMS.type1_first_possible


def test_fhir_carries_the_same_identifiers_and_narrative_text(clean_fhir_read: FhirOutput) -> None:
    fhir = clean_fhir_read
    patients = fhir.of("Patient")
    assert all(p["name"][0]["family"] in p["text"]["div"] for p in patients)
    assert all(POSTCODE.match(p["address"][0]["postalCode"]) for p in patients)
    conditions_with_notes = [c for c in fhir.of("Condition") if "note" in c]
    assert conditions_with_notes and all("text" in c for c in conditions_with_notes)
    staff = fhir.of("Practitioner")
    assert any(i["system"].endswith("gmc-number") for s in staff for i in s["identifier"])
