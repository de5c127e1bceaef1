"""Codes checked as SNOMED CT defines them (digits, length, partition, Verhoeff check digit), and
the extractor's use of that: a valid code no release knows is sent and counted, an invalid one is
quarantined with that reason."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from extracting import Keys
from fhir_exports import ukcore_with
from gpdpr.practice.extract import quarantine_path
from gpdpr.terminology import Status, classify, classify_all, embedded, load_catalogue, store
from gpdpr.terminology.sctid import check_digit, concept_problem, parse

FIXED = settings(max_examples=200, derandomize=True, deadline=None)


@st.composite
def sctids(draw: st.DrawFn, kind: str = "0") -> str:
    """A valid identifier of any length and either format, with its check digit computed."""
    if draw(st.booleans()):
        namespace = draw(st.integers(0, 9_999_999))
        item = draw(st.integers(1, 9_999_999))
        body = f"{item}{namespace:07d}1{kind}"
    else:
        body = f"{draw(st.integers(100, 10**15 - 1))}0{kind}"
    digit: str = check_digit(body)
    return body + digit


def test_real_identifiers_are_valid_concepts() -> None:
    # Every code the catalogue ships, the hierarchy's top, an opt-out code, and a dm+d product.
    real = [c.code for c in load_catalogue().concepts]
    real += ["138875005", "404684003", "827241000000103", "39113611000001102"]
    assert [c for c in real if concept_problem(c) is not None] == []
    long = parse("39113611000001102")
    assert not isinstance(long, str) and (long.format, long.namespace) == ("long", "1000001")


@FIXED
@given(sctids(), st.sampled_from("012"))
def test_a_valid_identifier_is_accepted_and_its_partition_read(code: str, kind: str) -> None:
    assert concept_problem(code) is None
    other = code[:-2] + kind
    other += check_digit(other)
    parsed = parse(other)
    assert not isinstance(parsed, str)
    assert parsed.kind == {"0": "concept", "1": "description", "2": "relationship"}[kind]
    if kind != "0":
        assert concept_problem(other) == f"it is a {parsed.kind} identifier, not a concept's"


@FIXED
@given(sctids(), st.data())
def test_any_single_digit_changed_is_refused(code: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(code) - 1))
    shift = data.draw(st.integers(1, 9))
    digit = str((int(code[at]) + shift) % 10)
    assert concept_problem(code[:at] + digit + code[at + 1 :]) is not None


@FIXED
@given(sctids(), st.data())
def test_any_two_neighbours_swapped_are_refused(code: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(code) - 2))
    if code[at] == code[at + 1]:
        return  # the same number: nothing was mistyped
    swapped = code[:at] + code[at + 1] + code[at] + code[at + 2 :]
    assert concept_problem(swapped) is not None


def test_what_is_not_an_identifier_says_why() -> None:
    assert concept_problem("12345") == "an SCTID has 6 to 18 digits, not 5"
    assert concept_problem("1" * 19) == "an SCTID has 6 to 18 digits, not 19"
    assert concept_problem("040468400") == "an SCTID does not start with 0"
    assert concept_problem("40468400３") == "an SCTID has only the digits 0-9"
    assert concept_problem("404684003 ") == "an SCTID has only the digits 0-9"
    assert (
        concept_problem("999999999999999999") == "99 is not a partition identifier SNOMED CT uses"
    )
    assert concept_problem("404684004") == (
        "its check digit is wrong (a digit mistyped or two swapped?)"
    )
    # Partition 1x needs the seven-digit namespace in front of it.
    short_long = "123410"
    assert concept_problem(short_long + check_digit(short_long)) is not None


def test_classify_knows_the_release_and_the_rules() -> None:
    assert classify("snomed", "404684003") is Status.KNOWN
    assert classify("dmd", "39113611000001102") is Status.KNOWN
    body = "123456700"  # item 1234567, partition 00: a short-format concept id in no release
    unknown = body + check_digit(body)
    assert classify("snomed", unknown) is Status.NOT_IN_RELEASE
    assert classify("snomed", "404684004") is Status.INVALID
    column = pa.chunked_array([["404684003", None, unknown], ["404684004", "404684003"]])
    assert classify_all("snomed", column).tolist() == [
        Status.KNOWN,
        Status.MISSING,
        Status.NOT_IN_RELEASE,
        Status.INVALID,
        Status.KNOWN,
    ]


def test_the_extractor_sends_a_valid_unknown_code_and_quarantines_an_invalid_one(
    tmp_path: Path, keys: Keys
) -> None:
    code = "765432100"  # item 7654321, partition 00: a concept id no release here has
    right = check_digit(code)
    wrong = str((int(right) + 1) % 10)
    before = ukcore_with(tmp_path / "before", keys, [])
    planted = [(code + right, "valid-unknown"), (code + wrong, "invalid-code")]
    manifest = ukcore_with(tmp_path, keys, planted)

    # The release codes were read by, on the manifest: here the embedded one, and it says so.
    assert manifest["terminology"]["name"] == store.EMBEDDED_NAME
    assert manifest["terminology"]["version"] == embedded.VERSION
    assert manifest["terminology"]["embedded"] is True
    sent = {n: t["rows"] for n, t in manifest["tables"].items()}
    assert sent["clinical_events"] == before["tables"]["clinical_events"]["rows"] + 1
    unknown = manifest["terminology"]["not_in_loaded_release"]["clinical_events"]
    assert unknown == before["terminology"]["not_in_loaded_release"]["clinical_events"] + 1
    reason = "code missing or not a valid SNOMED CT identifier"
    assert manifest["quarantined"]["by_reason"][reason] == 1
    assert reason not in before["quarantined"]["by_reason"]
    quarantine = quarantine_path(tmp_path / "package").read_text()
    assert f'"record_id":"invalid-code","reason":"{reason}"' in quarantine
    assert '"valid-unknown"' not in quarantine
