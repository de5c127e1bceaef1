"""Privacy, proved byte for byte: canaries planted in a practice's records must not appear anywhere
in what leaves it (every file of the package, Parquet metadata included) or in the quarantine file
that stays beside it.

Beyond the planted canaries, every identifier the practice holds (every NHS number, postcode,
phone number, email address, staff registration number) is searched for too: long enough that a
chance match in compressed bytes is vanishingly unlikely, and so searchable without false alarms.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import ahocorasick
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import Made
from extracting import Keys, run, tables
from fhir_exports import relist
from gpdpr.collect.service import Central, collect
from gpdpr.custodian.keys import read_pseudonym_key
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.kit import SIGNING_KEY
from gpdpr.spec import shipped
from home_scan import stored
from readers import practice_folders

GIVEN, FAMILY = "Zebediah", "Quillfeather"
STREET, TOWN = "17 Canarywharf Crescent", "Larkspur-upon-Test"
PHONE, EMAIL = "01632 960417", "zebediah.quillfeather@example.org"
BORN = "1931-02-17"
NOTE = f"Canary note: saw {GIVEN} {FAMILY} of {STREET} with his daughter Philippa-Canary"
LETTER = "Dear Dr Canary-Letterhead, thank you for seeing this gentleman"
LOT = "CANARYLOT9"
PLANTED = [
    GIVEN,
    FAMILY,
    STREET,
    "Canarywharf",
    TOWN,
    PHONE,
    PHONE.replace(" ", ""),
    EMAIL,
    BORN,
    "17/02/1931",
    "19310217",
    "Philippa-Canary",
    "Canary-Letterhead",
    LOT,
    "Canary note",
]
CANARY_PATIENTS = 20
CANARY_RECORDS = 60


def _variants(value: str) -> set[str]:
    """An identifier as written and without its spaces (999 123 4567 and 9991234567)."""
    return {value, value.replace(" ", "")}


def package_files(package: Path) -> Iterator[Path]:
    yield from sorted(package.iterdir())
    yield quarantine_path(package)


def _automaton(needles: set[str]) -> ahocorasick.Automaton:
    """All needles (as written and in lower case) in one Aho-Corasick automaton over Latin-1
    text, so that thousands of them are found in one pass over each file."""
    automaton = ahocorasick.Automaton()
    for needle in needles:
        for form in {needle, needle.lower()}:
            if form:
                automaton.add_word(form.encode().decode("latin-1"), needle)
    automaton.make_automaton()
    return automaton


def _found(automaton: ahocorasick.Automaton, data: bytes) -> list[str]:
    """The needles in `data`, but for a match wholly inside a long run of hex digits: that is a
    keyed hash (a pseudonym, a record id), whose digits no one chose, and in which a short
    all-digit needle (a staff number) turns up by chance now and then."""
    text = data.decode("latin-1")
    found = set()
    for end, needle in automaton.iter(text):
        start = end - len(needle) + 1
        if not _inside_hash(text, start, end):
            found.add(needle)
    return sorted(found)


_HEX = frozenset("0123456789abcdefABCDEF")
HASH_RUN = 32  # hex digits in a row that only a hash writes (an HMAC is 64)


def _inside_hash(text: str, start: int, end: int) -> bool:
    if not all(c in _HEX for c in text[start : end + 1]):
        return False
    left, right = start, end
    while left > 0 and text[left - 1] in _HEX and end - left < HASH_RUN:
        left -= 1
    while right + 1 < len(text) and text[right + 1] in _HEX and right - left < HASH_RUN:
        right += 1
    return right - left + 1 >= HASH_RUN


def assert_absent(package: Path, needles: set[str]) -> None:
    """Not one needle in any byte of any file, nor in any value once the tables are decoded
    (dates and numbers are text there, in any case), nor in Parquet key-value metadata."""
    automaton = _automaton(needles)
    for path in package_files(package):
        found = _found(automaton, path.read_bytes())
        assert not found, f"{path.name} holds {found[:5]}"
    for name, table in tables(package).items():
        found = _found(automaton, _as_text(table))
        assert not found, f"decoded {name} holds {found[:5]}"
        metadata = pq.read_metadata(package / f"{name}.parquet").metadata or {}
        assert set(metadata) <= {b"ARROW:schema"}, f"{name} carries extra metadata"


def _as_text(table: pa.Table) -> bytes:
    """Every value of the table as CSV text, bytes (a person's number, lake.tables.PERSON) as
    lower-case hex."""
    for i, field in enumerate(table.schema):
        column = stored(table.column(i))
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind):
            values = [None if v is None else v.hex() for v in column.to_pylist()]
            table = table.set_column(i, field.name, pa.array(values, pa.string()))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    text = bytes(sink.getvalue())
    return text + b"\n" + text.lower()


def _secrets(keys: Keys, ods: str) -> set[bytes]:
    key = read_pseudonym_key(keys.folder).key
    signing = (keys.kit(ods) / SIGNING_KEY).read_bytes()
    pem_body = b"".join(signing.splitlines()[1:-1])
    return {key, key.hex().encode(), base64.b64encode(key), pem_body, base64.b64decode(pem_body)}


def assert_no_secrets(package: Path, secrets: set[bytes]) -> None:
    for path in package_files(package):
        data = path.read_bytes()
        assert not any(s in data for s in secrets), f"{path.name} holds key material"


# ---- FHIR -------------------------------------------------------------------------------------


def _rewrite(path: Path, change: dict[int, dict[str, object]]) -> list[dict[str, object]]:
    """Apply {line index: resource} edits to an NDJSON file; return the resources it held."""
    resources = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for i, resource in change.items():
        resources[i] = resource
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return resources


def _plant_fhir(practice: Path) -> dict[str, set[str]]:
    """Plant canaries all through a FHIR practice; return the identifiers it holds."""
    patients = [
        orjson.loads(line) for line in (practice / "Patient.ndjson").read_bytes().splitlines()
    ]
    for p in patients[:CANARY_PATIENTS]:
        p["name"] = [{"family": FAMILY, "given": [GIVEN], "prefix": ["Mr"]}]
        p["address"] = [
            {"line": [STREET], "city": TOWN, "postalCode": p["address"][0]["postalCode"]}
        ]
        p["telecom"] = [{"system": "phone", "value": PHONE}, {"system": "email", "value": EMAIL}]
        p["birthDate"] = BORN
        p["text"] = {
            "status": "generated",
            "div": f"<div>{GIVEN} {FAMILY}, born {BORN}, {STREET}</div>",
        }
    _rewrite(practice / "Patient.ndjson", dict(enumerate(patients[:CANARY_PATIENTS])))
    canary_ids = {p["id"] for p in patients[:CANARY_PATIENTS]}

    nhs = [i["value"] for p in patients for i in p["identifier"]]
    spaced = f"{nhs[0][:3]} {nhs[0][3:6]} {nhs[0][6:]}"
    note = f"{NOTE}, NHS number {spaced}, phone {PHONE}"
    for kind, element in [
        ("Observation", "note"),
        ("Condition", "note"),
        ("MedicationRequest", "note"),
        ("ServiceRequest", "note"),
    ]:
        resources = [
            orjson.loads(line) for line in (practice / f"{kind}.ndjson").read_bytes().splitlines()
        ]
        edits = {}
        for i, r in enumerate(resources[:CANARY_RECORDS]):
            r[element] = [{"text": note}]
            r["text"] = {"status": "additional", "div": f"<div>{note}</div>"}
            if kind == "MedicationRequest":
                r["dosageInstruction"] = [{"text": f"one daily, ask {GIVEN}"}]
            edits[i] = r
        _rewrite(practice / f"{kind}.ndjson", edits)
    immunisations = [
        orjson.loads(line) for line in (practice / "Immunization.ndjson").read_bytes().splitlines()
    ]
    _rewrite(
        practice / "Immunization.ndjson",
        {i: {**r, "lotNumber": LOT} for i, r in enumerate(immunisations[:CANARY_RECORDS])},
    )
    allergies = [
        orjson.loads(line)
        for line in (practice / "AllergyIntolerance.ndjson").read_bytes().splitlines()
    ]
    _rewrite(
        practice / "AllergyIntolerance.ndjson",
        {
            i: {**r, "reaction": [{"manifestation": [{"text": note}]}]}
            for i, r in enumerate(allergies[:10])
        },
    )
    # A truncated line, a code no terminology knows, a letter, and a resource type nobody asked
    # for: each carries the canary note.
    with (practice / "Condition.ndjson").open("ab") as f:
        f.write(
            b'{"resourceType":"Condition","id":"canary-truncated","note":[{"text":"'
            + note.encode()
            + b"\n"
        )
        unknown = {
            "resourceType": "Condition",
            "id": "canary-unknown-code",
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": "999999999999999999"}]
            },
            "subject": {"reference": f"Patient/{patients[0]['id']}"},
            "onsetDateTime": "2020-01-01",
            "note": [{"text": note}],
        }
        f.write(orjson.dumps(unknown) + b"\n")
    letter = {
        "resourceType": "DocumentReference",
        "id": "canary-letter",
        "status": "current",
        "description": LETTER,
        "subject": {"reference": f"Patient/{patients[0]['id']}"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(f"{LETTER} {note}".encode()).decode(),
                }
            }
        ],
    }
    (practice / "DocumentReference.ndjson").write_bytes(orjson.dumps(letter) + b"\n")
    flag = {"resourceType": "Flag", "id": "canary-flag", "status": "active", "code": {"text": note}}
    (practice / "Flag.ndjson").write_bytes(orjson.dumps(flag) + b"\n")

    practitioners = [
        orjson.loads(line) for line in (practice / "Practitioner.ndjson").read_bytes().splitlines()
    ]
    return {
        "canary_patients": canary_ids,
        "nhs": {v for n in nhs for v in _variants(n)} | {spaced},
        "postcodes": {v for p in patients for v in _variants(p["address"][0]["postalCode"])},
        "contacts": {t["value"] for p in patients for t in p.get("telecom", [])},
        "staff": {i["value"] for p in practitioners for i in p["identifier"]}
        | {p["name"][0]["family"] for p in practitioners},
    }


@pytest.fixture(scope="module")
def fhir_canaries(
    clean_fhir: Made, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, set[str]], dict[str, object]]:
    source = practice_folders(clean_fhir.root)[0]
    practice = tmp_path_factory.mktemp("canary") / source.name
    shutil.copytree(source, practice)
    held = _plant_fhir(practice)
    relist(practice)
    package = practice.parent / "package"
    manifest = run(practice, package, keys)
    return package, held, manifest


def test_fhir_canaries_reached_the_extractor(
    fhir_canaries: tuple[Path, dict[str, set[str]], dict[str, object]],
) -> None:
    """The planted records were read, not skipped: otherwise their absence would prove nothing."""
    package, _, manifest = fhir_canaries
    patients = tables(package)["patients"]
    born_1931 = patients.filter(
        pc.and_(pc.equal(patients["birth_year"], 1931), pc.equal(patients["birth_month"], 2))
    )
    assert born_1931.num_rows >= CANARY_PATIENTS - 3  # less any with a Type 1 opt-out
    # The Flag is no opt-out (no dissent code): read for opt-outs only, so counted as not read.
    assert manifest["not_read"] == {"DocumentReference": 1, "Flag": 1}
    quarantine = quarantine_path(package).read_text()
    assert '"record_id":"canary-truncated"' in quarantine
    assert (
        '"record_id":"canary-unknown-code","reason":"code missing or not a valid SNOMED CT'
        in quarantine
    )
    events = tables(package)["clinical_events"]
    assert events.num_rows > 1000


def test_nothing_planted_in_fhir_leaves_the_practice(
    fhir_canaries: tuple[Path, dict[str, set[str]], dict[str, object]], keys: Keys
) -> None:
    package, held, _ = fhir_canaries
    needles = set(PLANTED) | held["nhs"] | held["postcodes"] | held["contacts"] | held["staff"]
    assert len(held["nhs"]) > 1000 and len(held["postcodes"]) > 100
    assert_absent(package, needles)
    assert_no_secrets(package, _secrets(keys, "Z10001"))


def test_restricted_codes_and_full_dates_of_birth_are_not_in_any_value(
    fhir_canaries: tuple[Path, dict[str, set[str]], dict[str, object]],
) -> None:
    package, _, _ = fhir_canaries
    restricted = {c.code for s in shipped().code_sets.values() for c in s.codes if not s.collect}
    born = date.fromisoformat(BORN)
    for name, table in tables(package).items():
        for column in table.column_names:
            values = table[column]
            if pa.types.is_string(values.type):
                assert not set(values.unique().to_pylist()) & restricted, f"{name}.{column}"
            if pa.types.is_date(values.type):
                assert not pc.any(pc.equal(values, born)).as_py(), f"{name}.{column}"


# ---- columnar --------------------------------------------------------------------------------


def _set(table: pa.Table, column: str, rows: int, value: object) -> pa.Table:
    values = table[column].to_pylist()
    values[:rows] = [value] * rows
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


def _plant_columnar(practice: Path) -> dict[str, set[str]]:
    patients = pq.read_table(practice / "patients.parquet")
    nhs = patients["nhs_number"].to_pylist()
    spaced = f"{nhs[0][:3]} {nhs[0][3:6]} {nhs[0][6:]}"
    note = f"{NOTE}, NHS number {spaced}, phone {PHONE}"
    planted = patients
    for column, value in [
        ("given_name", GIVEN),
        ("family_name", FAMILY),
        ("address_line_1", STREET),
        ("address_line_2", TOWN),
        ("phone", PHONE),
        ("email", EMAIL),
        ("date_of_birth", date.fromisoformat(BORN)),
    ]:
        planted = _set(planted, column, CANARY_PATIENTS, value)
    pq.write_table(planted, practice / "patients.parquet")
    for table, column, value in [
        ("clinical_events", "free_text", note),
        ("medications", "free_text", note),
        ("medications", "dosage", f"one daily, ask {GIVEN}"),
        ("referrals", "free_text", note),
        ("immunisations", "batch", LOT),
        ("allergies", "reaction", note),
    ]:
        path = practice / f"{table}.parquet"
        pq.write_table(_set(pq.read_table(path), column, CANARY_RECORDS, value), path)
    staff = pq.read_table(practice / "staff.parquet")
    return {
        "nhs": {v for n in nhs for v in _variants(n)} | {spaced},
        "postcodes": {v for p in patients["postcode"].to_pylist() for v in _variants(p)},
        "contacts": {v for v in patients["phone"].to_pylist() + patients["email"].to_pylist() if v},
        "staff": {
            v
            for c in ("family_name", "professional_code", "sds_user_id")
            for v in staff[c].to_pylist()
            if v
        },
    }


def test_nothing_planted_in_a_columnar_extract_leaves_the_practice(
    clean_columnar: Made, keys: Keys, tmp_path: Path
) -> None:
    source = practice_folders(clean_columnar.root)[0]
    practice = tmp_path / source.name
    shutil.copytree(source, practice)
    held = _plant_columnar(practice)
    package = tmp_path / "package"
    run(practice, package, keys)
    patients = tables(package)["patients"]
    assert pc.sum(pc.equal(patients["birth_year"], 1931)).as_py() >= CANARY_PATIENTS - 3
    needles = set(PLANTED) | held["nhs"] | held["postcodes"] | held["contacts"] | held["staff"]
    assert_absent(package, needles)
    assert_no_secrets(package, _secrets(keys, source.name))

    # And nothing of it anywhere the centre stores it: the lake, its logs, the database.
    centre = Central(tmp_path / "home", key_folder=keys.folder)
    assert collect(centre, [package]).version is not None
    assert_absent_from_centre(centre.home, needles, _secrets(keys, source.name))


def assert_absent_from_centre(home: Path, needles: set[str], secrets: set[bytes]) -> None:
    """Every file under the centre's home, byte for byte, and every Parquet file decoded."""
    automaton = _automaton(needles)
    files = sorted(p for p in home.rglob("*") if p.is_file())
    assert any(p.suffix == ".parquet" for p in files) and (home / "central.db").exists()
    for path in files:
        data = path.read_bytes()
        found = _found(automaton, data)
        assert not found, f"{path.relative_to(home)} holds {found[:5]}"
        assert not any(s in data for s in secrets), f"{path.relative_to(home)} holds key material"
        if path.suffix == ".parquet":
            found = _found(automaton, _as_text(pq.read_table(path)))
            assert not found, f"decoded {path.relative_to(home)} holds {found[:5]}"


def test_the_scan_finds_what_is_there(
    fhir_canaries: tuple[Path, dict[str, set[str]], dict[str, object]],
) -> None:
    """The scanner itself can fail: in raw bytes (the ODS code is in the manifest) and only once
    decoded (a year of birth is a 32-bit integer in Parquet, text in the decoded scan)."""
    package, _, _ = fhir_canaries
    number = _automaton({"9858498"})  # a staff number: its digits are hex digits too
    assert _found(number, b"x,9858498,y") == ["9858498"]
    assert _found(number, b"by GMC9858498 on 2024-01-01") == ["9858498"]
    assert _found(number, b"abc" * 8 + b"9858498" + b"def" * 8) == []  # in a hash, by chance
    with pytest.raises(AssertionError, match=r"manifest\.json holds"):
        assert_absent(package, {"Z10001"})
    with pytest.raises(AssertionError, match="decoded patients holds"):
        assert_absent(package, {",1931,2,"})
