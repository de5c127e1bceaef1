"""The data specification: what leaves a practice, recorded and checked.

These tests hold the shipped specification to what the scheme promises the public (what is
collected, what never is, how dates and postcodes are cut down, what is kept out by law) and hold
the loader to its promise that a bad file is refused with a message naming the exact key.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from gpdpr.errors import UserError
from gpdpr.practice.rules import check_supported
from gpdpr.spec import Specification, content_hash, load, parse, shipped
from gpdpr.terminology import load_catalogue

SPEC_FILE = "specification.toml"
RELEASED_FILE = "released.toml"


def shipped_text() -> str:
    return resources.files("gpdpr.spec").joinpath(SPEC_FILE).read_text(encoding="utf-8")


def released() -> dict[str, str]:
    text = resources.files("gpdpr.spec").joinpath(RELEASED_FILE).read_text(encoding="utf-8")
    versions = tomllib.loads(text)["versions"]
    assert isinstance(versions, dict)
    return {str(k): str(v) for k, v in versions.items()}


def edit(text: str, old: str, new: str) -> str:
    """Replace one exact passage; the passage must occur once, so an edit never misses silently."""
    assert text.count(old) == 1, f"expected exactly one {old!r} in the specification"
    return text.replace(old, new)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---- released versions and the content hash ---------------------------------------------------


def test_the_shipped_version_and_its_hash_are_recorded_as_released() -> None:
    spec = shipped()
    versions = released()
    assert spec.version in versions, (
        f"specification {spec.version} is not in released.toml: add "
        f'"{spec.version}" = "{spec.sha256}"'
    )
    assert versions[spec.version] == spec.sha256, (
        f"specification.toml changed but its version ({spec.version}) did not: bump the version "
        f'and record "<new version>" = "{spec.sha256}" in released.toml'
    )


def test_released_toml_is_well_formed_and_the_shipped_version_is_the_newest() -> None:
    versions = released()
    assert versions
    for version, digest in versions.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert re.fullmatch(r"[0-9a-f]{64}", digest), (version, digest)
    # One content per version, and no content released under two versions.
    assert len(set(versions.values())) == len(versions)
    assert shipped().version == max(versions, key=version_key)


def test_a_changed_meaning_under_the_same_version_does_not_match_the_record() -> None:
    spec = shipped()
    changed = parse(
        edit(
            shipped_text(),
            'description = "Month of birth (1 to 12). The day is never collected."',
            'description = "Date of birth, in full."',
        ),
        source="changed.toml",
    )
    assert changed.version == spec.version
    assert changed.sha256 != released()[spec.version]


def test_the_hash_ignores_comments_and_layout() -> None:
    text = shipped_text()
    tidied_lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    tidied = "\n".join(line for line in tidied_lines if line.strip()) + "\n"
    tidied = edit(tidied, 'version = "1.2.0"', 'version   =   "1.2.0"   # a trailing comment')
    assert tidied != text
    assert parse(tidied, source="tidied.toml").sha256 == shipped().sha256


def test_the_hash_of_a_copy_is_the_same_wherever_it_is_read_from(tmp_path: Path) -> None:
    copy = tmp_path / "copy.toml"
    copy.write_text(shipped_text(), encoding="utf-8")
    spec = load(copy)
    assert spec.sha256 == shipped().sha256
    assert spec.source == str(copy)
    assert load(None) is shipped()
    assert content_hash(shipped().raw) == shipped().sha256


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a field's description
        ('description = "Year of birth."', 'description = "Year of birth, four digits."'),
        # a table's description
        (
            'description = "Coded allergies and intolerances, with the date of onset."',
            'description = "Coded allergies and intolerances."',
        ),
        # a code in a restricted set
        ('code = "58533008"', 'code = "58534002"'),
        # a code's term
        ('term = "Syphilis"', 'term = "Syphilis (disorder)"'),
        # a field's type
        (
            '[tables.patients.fields.birth_month]\ntype = "int"',
            '[tables.patients.fields.birth_month]\ntype = "float"',
        ),
        # a field removed
        (
            '[tables.referrals.fields.priority]\ntype = "string"\n'
            'description = "routine, urgent or two-week-wait (suspected cancer)."\n'
            'values = ["routine", "urgent", "two-week-wait"]\n',
            "",
        ),
        # a sensitive set switched on
        (
            'rule = "sensitive"\ncollect = false\nreason = "Often',
            'rule = "sensitive"\ncollect = true\nreason = "Often',
        ),
        # the retention period
        ("years = 10", "years = 11"),
        # a never-collected reason
        (
            'reason = "They identify a person directly and have no use in research."',
            'reason = "They identify a person directly."',
        ),
    ],
)
def test_the_hash_changes_with_any_change_of_meaning(old: str, new: str) -> None:
    changed = parse(edit(shipped_text(), old, new), source="changed.toml")
    assert changed.sha256 != shipped().sha256


# ---- what is collected -------------------------------------------------------------------------


def test_every_table_and_field_has_a_plain_english_description() -> None:
    spec = shipped()
    assert spec.tables
    for table in spec.tables.values():
        assert table.title.strip(), table.name
        assert len(table.description.split()) >= 5, table.name
        assert table.covers, f"{table.name} does not say what it covers"
        assert table.fields, table.name
        for f in table.fields:
            words = f.description.split()
            assert len(words) >= 2, f"{table.name}.{f.name}: {f.description!r}"
            assert f.description.strip().lower() != f.name.replace("_", " ")
            assert not re.search(r"\b(TODO|TBD|FIXME|XXX)\b", f.description), f.name
    for part in [
        spec.summary,
        spec.raw["pseudonymisation"]["description"],
        spec.raw["type1_opt_out"]["description"],
        spec.raw["retention"]["description"],
        *(c["description"] for c in spec.raw["coarsening"].values()),
    ]:
        assert len(part.split()) >= 5, part


REQUIRED_RECORD_TYPES = [
    "diagnoses",
    "symptoms",
    "observations",
    "test results",
    "medications",
    "allergies",
    "immunisations",
    "referrals",
    "appointments",
    "sex",
    "ethnicity",
    "sexual orientation",
    "staff who recorded each item",
]


def covered(spec: Specification) -> set[str]:
    """Everything the tables say they cover: each `covers` entry and each part of each title."""
    found: set[str] = set()
    for table in spec.tables.values():
        for phrase in [*table.covers, *re.split(r",\s*|\s+and\s+", table.title)]:
            phrase = phrase.strip().lower()
            found.add(phrase.removeprefix("the "))
    return found


@pytest.mark.parametrize("record_type", REQUIRED_RECORD_TYPES)
def test_every_required_record_type_is_covered(record_type: str) -> None:
    assert record_type in covered(shipped()), f"no table covers {record_type!r}"


def test_each_record_says_who_recorded_it_and_measurements_carry_values() -> None:
    spec = shipped()
    record_tables = [n for n in spec.tables if n not in ("patients", "registrations", "staff")]
    assert len(record_tables) >= 6
    types = {f.name: f.type for f in spec.tables["staff"].fields}
    assert types == {"staff": "pseudonym", "role": "string"}
    for name in record_tables:
        fields = {f.name: f.type for f in spec.tables[name].fields}
        assert fields.get("staff") == "pseudonym", f"{name} does not say who recorded it"
        assert fields.get("patient") == "pseudonym", name
    events = {f.name: f.type for f in spec.tables["clinical_events"].fields}
    assert events["value"] == "float" and events["unit"] == "string"


def test_recalls_are_listed_as_planned_and_not_as_collected() -> None:
    spec = shipped()
    recalls = spec.raw["planned"]["recalls"]
    assert recalls["title"].strip() and len(recalls["description"].split()) >= 5
    assert "recalls" not in spec.tables
    assert "recalls" not in covered(spec)


# ---- what is never collected ------------------------------------------------------------------


@pytest.mark.parametrize(
    "item", ["names", "addresses", "contact_details", "free_text", "documents", "identifiers"]
)
def test_never_collected_items_are_listed_with_a_reason(item: str) -> None:
    never = shipped().never_collected
    assert item in never, f"[never_collected.{item}] is missing"
    assert never[item].title.strip()
    assert len(never[item].what.split()) >= 3
    assert len(never[item].reason.split()) >= 5


def test_every_never_collected_item_has_a_reason_and_documents_are_never_read() -> None:
    spec = shipped()
    for item in spec.never_collected.values():
        assert item.reason.strip() and item.what.strip(), item.name
    assert {"DocumentReference", "Binary", "Media"} <= spec.never_read_resource_types()


FORBIDDEN_TOKENS = {
    "name",
    "names",
    "surname",
    "forename",
    "address",
    "phone",
    "telephone",
    "mobile",
    "email",
    "note",
    "notes",
    "text",
    "comment",
    "narrative",
    "dob",
    "day",
}
FORBIDDEN_PARTS = [
    "date_of_birth",
    "birth_date",
    "birthdate",
    "nhs_number",
    "nhsnumber",
    "free_text",
]
# Identifiers that may leave only as a keyed code (type pseudonym).
KEYED_ONLY = ["postcode", "nhs", "gmc", "nmc", "smartcard"]


def test_no_field_could_carry_a_name_contact_free_text_or_an_identifier_in_clear() -> None:
    spec = shipped()
    for table in spec.tables.values():
        for f in table.fields:
            where = f"{table.name}.{f.name}"
            assert not FORBIDDEN_TOKENS & set(f.name.split("_")), where
            assert not any(part in f.name for part in FORBIDDEN_PARTS), where
            if any(part in f.name for part in KEYED_ONLY):
                assert f.type == "pseudonym", f"{where} must be a keyed code, not {f.type}"


def test_date_of_birth_and_of_death_leave_only_as_year_and_month() -> None:
    spec = shipped()
    patients = {f.name: f.type for f in spec.tables["patients"].fields}
    for kind in ("birth", "death"):
        assert patients[f"{kind}_year"] == "int"
        assert patients[f"{kind}_month"] == "int"
        coarsening = spec.raw["coarsening"][f"date_of_{kind}"]
        assert coarsening["leaves_as"] == "year and month"
        assert coarsening["fields"] == [f"{kind}_year", f"{kind}_month"]
    # A full date needs a date field; the patients table has none.
    assert [n for n, t in patients.items() if t == "date"] == []
    # Everything the postcode becomes is a patients field.
    assert set(spec.raw["coarsening"]["postcode"]["fields"]) <= set(patients)


def test_retention_is_ten_years_on_medications_referrals_and_appointments() -> None:
    spec = shipped()
    assert spec.retention_years == 10
    assert set(spec.retention_tables) == {"medications", "referrals", "appointments"}
    for name in spec.retention_tables:
        table = spec.tables[name]
        assert table.date in table.field_names
        # The public description says the same period the extractor enforces.
        assert f"{spec.retention_years} years" in table.description, name
    assert f"{spec.retention_years} years" in spec.raw["retention"]["description"]


# ---- codes -------------------------------------------------------------------------------------


def test_the_type1_codes_are_the_national_ones_and_match_the_catalogue() -> None:
    spec = shipped()
    assert (spec.dissent.system, spec.dissent.code) == ("snomed", "827241000000103")
    assert (spec.dissent_withdrawn.system, spec.dissent_withdrawn.code) == (
        "snomed",
        "827261000000102",
    )
    catalogue = load_catalogue()
    assert [c.code for c in catalogue.codes("optout.type1_dissent")] == [spec.dissent.code]
    assert [c.code for c in catalogue.codes("optout.type1_withdrawn")] == [
        spec.dissent_withdrawn.code
    ]
    optout = {c.code for c in catalogue.concepts if c.key.startswith("optout.")}
    assert optout == {spec.dissent.code, spec.dissent_withdrawn.code}


def set_codes(spec: Specification, rule: str) -> set[tuple[str, str]]:
    return {(c.system, c.code) for s in spec.code_sets.values() if s.rule == rule for c in s.codes}


@pytest.mark.parametrize("rule", ["restricted", "sensitive"])
def test_every_catalogue_code_of_a_kind_is_in_a_spec_set_of_that_rule(rule: str) -> None:
    spec = shipped()
    catalogue = load_catalogue()
    in_catalogue = {(c.system, c.code) for c in catalogue.concepts if c.key.startswith(f"{rule}.")}
    assert in_catalogue, f"the catalogue has no {rule}.* codes"
    missing = in_catalogue - set_codes(spec, rule)
    assert not missing, f"catalogue {rule}.* codes in no {rule} code set: {sorted(missing)}"
    # And the other way: every code in a set is one the catalogue knows, filed the same way.
    for code_set in spec.code_sets.values():
        if code_set.rule != rule:
            continue
        for c in code_set.codes:
            concept = catalogue.lookup(c.system, c.code)
            assert concept is not None, f"{code_set.name}: {c.code} is not in the catalogue"
            assert concept.key.startswith(f"{rule}."), (code_set.name, c.code, concept.key)


def test_restricted_and_sensitive_sets_are_kept_out_by_default() -> None:
    spec = shipped()
    rules = {s.rule for s in spec.code_sets.values()}
    assert rules == {"restricted", "sensitive"}
    for code_set in spec.code_sets.values():
        assert code_set.collect is False, code_set.name
        assert len(code_set.why.split()) >= 3, code_set.name
    excluded = spec.excluded_codes()
    for code_set in spec.code_sets.values():
        for c in code_set.codes:
            assert excluded[c.code] == code_set.name
    # No code sits in two sets (one rule per code).
    all_codes = [c.code for s in spec.code_sets.values() for c in s.codes]
    assert len(all_codes) == len(set(all_codes))
    assert set_codes(spec, "restricted").isdisjoint(set_codes(spec, "sensitive"))


# ---- bad specification files -------------------------------------------------------------------

SENSITIVE_STI = 'rule = "sensitive"\ncollect = false\nreason = "Often'


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'version = "1.2.0"',
            'version = "1.2.0',
            "bad.toml: not valid TOML",
        ),
        (
            'version = "1.2.0"\n',
            "",
            "bad.toml: [specification] is missing `version`",
        ),
        (
            '[tables.patients.fields.sex]\ntype = "string"',
            '[tables.patients.fields.sex]\ntype = "text"',
            "bad.toml: [tables.patients.fields.sex] type 'text' is not one of",
        ),
        (
            'title = "Assisted conception and IVF"\nrule = "restricted"\n',
            'title = "Assisted conception and IVF"\nrule = "restricted"\ncollect = true\n',
            "bad.toml: [code_sets.assisted_conception] a restricted set is never collected",
        ),
        (
            'tables = ["medications", "referrals", "appointments"]',
            'tables = ["medications", "referrals", "consultations"]',
            "bad.toml: [retention] table 'consultations' is not a dated table",
        ),
        (
            'tables = ["medications", "referrals", "appointments"]',
            'tables = ["medications", "referrals", "staff"]',
            "bad.toml: [retention] table 'staff' is not a dated table",
        ),
        (
            'code = "52637005"',
            'code = "5263700X"',
            "bad.toml: [code_sets.assisted_conception.codes] code '5263700X' is not a SNOMED CT",
        ),
        (
            SENSITIVE_STI,
            'rule = "sensitive"\nreason = "Often',
            "bad.toml: [code_sets.sexually_transmitted_infection] is missing `collect`",
        ),
        (
            'dissent = { system = "snomed", code = "827241000000103",',
            'dissent = { system = "snomed", code = "827241000000104",',
            "bad.toml: [type1_opt_out.dissent] code '827241000000104' is not a SNOMED CT concept "
            "identifier: its check digit is wrong",
        ),
        (
            'law = "Human Fertilisation',
            'ecl = "<< 52637005 :"\nlaw = "Human Fertilisation',
            "bad.toml: [code_sets.assisted_conception] `ecl`: ECL '<< 52637005 :', at character "
            "13: refinements",
        ),
        (
            'dissent = { system = "snomed", code = "827241000000103",',
            'dissent = { system = "read", code = "827241000000103",',
            "bad.toml: [type1_opt_out.dissent] code system 'read' is not snomed or dmd",
        ),
        (
            'date = "onset_date"',
            'date = "onset"',
            "bad.toml: [tables.allergies] `date = 'onset'` is not one of its fields",
        ),
        ("years = 10", 'years = "10"', "bad.toml: [retention] `years` should be"),
        ("years = 10", "years = true", "bad.toml: [retention] `years` should be"),
        ("years = 10", "years = 0", "bad.toml: [retention] `years = 0` must be at least 1"),
        (
            'code = "52637005"',
            'code = "\u0665\u0668\u0665\u0661\u0662\u0663"',
            "bad.toml: [code_sets.assisted_conception.codes] code",
        ),
        (
            "[code_sets.assisted_conception]",
            '[code_set.hiv]\ntitle = "misspelt"\n\n[code_sets.assisted_conception]',
            "bad.toml: [code_set] is not a section of a specification",
        ),
        (
            '[tables.patients.fields.sex]\ntype = "string"\n'
            'description = "Sex as recorded: F, M or U (unknown)."',
            "[tables.patients.fields]\nsex = 5",
            "bad.toml: [tables.patients.fields.sex] should be a table",
        ),
    ],
)
def test_a_bad_specification_is_refused_naming_the_exact_key(
    old: str, new: str, message: str
) -> None:
    with pytest.raises(UserError) as caught:
        parse(edit(shipped_text(), old, new), source="bad.toml")
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text  # the CLI prints it on one line


def test_a_bad_specification_file_is_named_by_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text(edit(shipped_text(), 'version = "1.2.0"\n', ""), encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{bad}: [specification] is missing")):
        load(bad)
    with pytest.raises(UserError, match="cannot read the specification"):
        load(tmp_path / "absent.toml")


def test_the_extractor_supports_the_shipped_specification() -> None:
    check_supported(shipped())  # raises if it could not make a field


def test_the_extractor_refuses_a_field_it_cannot_make() -> None:
    text = shipped_text() + (
        "\n[tables.patients.fields.nhs_number]\n"
        'type = "pseudonym"\n'
        'description = "The NHS number in clear."\n'
    )
    spec = parse(text, source="wider.toml")  # a well-formed file: only the extractor says no
    assert "nhs_number" in spec.tables["patients"].field_names
    with pytest.raises(UserError) as caught:
        check_supported(spec)
    assert str(caught.value) == (
        "wider.toml: the extractor cannot make field(s) nhs_number of table 'patients'"
    )


def test_the_extractor_refuses_a_table_it_has_no_source_for() -> None:
    text = shipped_text() + (
        "\n[tables.recalls]\n"
        'title = "Recalls"\n'
        'covers = ["recalls"]\n'
        'description = "Reviews and screening the patient was invited to."\n'
        "[tables.recalls.fields.patient]\n"
        'type = "pseudonym"\n'
        'description = "The person\'s keyed code."\n'
    )
    with pytest.raises(UserError, match="has no source for table 'recalls'"):
        check_supported(parse(text, source="recalls.toml"))
