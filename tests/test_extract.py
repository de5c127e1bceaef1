"""The practice extractor against the specification: what leaves, what does not, and why."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import Extracted, Made
from extracting import Keys, patient_pseudonym, record_pseudonyms, run, tables
from gpdpr import spec as specification
from gpdpr.errors import UserError
from gpdpr.practice.extract import parse_watermark, quarantine_path
from gpdpr.practice.rules import package_schema
from readers import practice_folders

SPEC = specification.shipped()
DISSENT = SPEC.dissent.code
WITHDRAWN = SPEC.dissent_withdrawn.code


def _select(query: str) -> duckdb.DuckDBPyRelation:
    """A SELECT's relation (duckdb.sql gives None only for a statement that returns nothing)."""
    relation = duckdb.sql(query)
    assert relation is not None
    return relation


def _sorted(table: pa.Table, by: list[str]) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in by])


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns decoded (they sort by their indices, not their values)."""
    return pa.table(
        {
            c: table[c].cast(table[c].type.value_type)
            if pa.types.is_dictionary(table[c].type)
            else table[c]
            for c in table.column_names
        }
    )


def test_package_tables_are_exactly_the_specification(
    clean_columnar_packages: Extracted,
) -> None:
    for package in clean_columnar_packages.packages.iterdir():
        if not package.is_dir():
            continue
        written = tables(package)
        for name, table in SPEC.tables.items():
            assert written[name].schema.equals(package_schema(table)), name
        assert set(written) == {*SPEC.tables, "deletions"}


def test_clean_records_quarantine_nothing(
    clean_columnar_packages: Extracted, clean_fhir_packages: Extracted
) -> None:
    for extracted in (clean_columnar_packages, clean_fhir_packages):
        for ods, manifest in extracted.manifests.items():
            assert manifest["quarantined"] == {"rows": 0, "by_reason": {}}, ods
            assert quarantine_path(extracted.packages / ods).read_bytes() == b""


def test_fhir_and_columnar_extracts_of_one_practice_carry_the_same_rows(
    clean_columnar_packages: Extracted, clean_fhir_packages: Extracted
) -> None:
    for ods in clean_fhir_packages.manifests:
        from_columnar = tables(clean_columnar_packages.packages / ods)
        from_fhir = tables(clean_fhir_packages.packages / ods)
        for name in SPEC.tables:
            a, b = from_columnar[name], from_fhir[name]
            if "record_id" in a.column_names:
                # Each format's own ids ("123", "z10001-c123") leave as different keyed codes.
                a, b = a.drop_columns(["record_id"]), b.drop_columns(["record_id"])
            a, b = _plain(a), _plain(b)
            key = a.column_names
            assert a.num_rows == b.num_rows > 0, name
            assert _sorted(a, key).equals(_sorted(b, key)), f"{ods} {name}"


def test_faults_are_quarantined_with_file_line_and_reason_and_the_rest_goes_through(
    messy_fhir: Made, messy_fhir_packages: Extracted
) -> None:
    planted = messy_fhir.summary.total_faults()
    found: dict[str, int] = {}
    for manifest in messy_fhir_packages.manifests.values():
        for reason, n in manifest["quarantined"]["by_reason"].items():  # type: ignore[index]
            found[reason] = found.get(reason, 0) + n
    # Faults in the source that no rule can misread are caught exactly.
    assert found["not valid JSON (a truncated or damaged line)"] == planted["truncated_line"]
    assert found["a date or time that cannot be read"] == planted["unparseable_date"]
    assert found["no patient (subject) given"] == planted["no_subject"]
    # The rest lose only those that belong to Type 1 patients (excluded, never reported) or that
    # carry a second fault reported first.
    for reason, kind in [
        ("code missing or not a valid SNOMED CT identifier", "unknown_code"),
        ("duplicate record id (the first is kept)", "duplicate_id"),
        ("implausible date (before birth, before 1900 or after the extract)", "implausible_date"),
    ]:
        assert 0.93 * planted[kind] <= found[reason] <= planted[kind], reason

    for ods in messy_fhir_packages.manifests:
        lines = quarantine_path(messy_fhir_packages.packages / ods).read_bytes().splitlines()
        assert lines
        sources: dict[str, list[bytes]] = {}
        for line in lines:
            entry = orjson.loads(line)
            assert set(entry) == {
                "source",
                "position",
                "record_id",
                "reason",
                "resource_type",
                "id_pseudonym",
                "path",
            }
            if entry["source"] not in sources:
                path = messy_fhir.root / ods / entry["source"]
                sources[entry["source"]] = path.read_bytes().splitlines()
            text = sources[entry["source"]][entry["position"] - 1]
            if entry["record_id"] is not None:  # the line is the record it names
                assert f'"id":"{entry["record_id"]}"'.encode() in text
        assert tables(messy_fhir_packages.packages / ods)["clinical_events"].num_rows > 1000


def _expected_opt_outs(practice: Path) -> tuple[set[int], set[int]]:
    """(active, withdrawn) local patient ids, worked out independently with SQL."""
    rows = _select(
        f"""
        select patient_id, arg_max(code, (effective_date, recorded_at, code = '{DISSENT}')) latest
        from '{practice}/clinical_events.parquet'
        where code in ('{DISSENT}', '{WITHDRAWN}') and status = 'active'
          and patient_id is not null
        group by patient_id
        """
    ).fetchall()
    active = {p for p, code in rows if code == DISSENT}
    return active, {p for p, _ in rows} - active


def _pseudonym(key: Keys, nhs_number: str) -> str:
    """The patient pseudonym, derived here from the documented method, not the extractor's code."""
    return patient_pseudonym(key, nhs_number)


def _pseudonyms_of(practice: Path, ids: set[int], key: Keys) -> set[str]:
    patients = pq.read_table(practice / "patients.parquet", columns=["patient_id", "nhs_number"])
    return {
        _pseudonym(key, nhs)
        for pid, nhs in zip(
            patients["patient_id"].to_pylist(), patients["nhs_number"].to_pylist(), strict=True
        )
        if pid in ids
    }


def test_type1_patients_send_nothing_and_withdrawn_ones_are_back(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys
) -> None:
    key = keys
    seen_active = seen_withdrawn = 0
    for practice in practice_folders(clean_columnar.root):
        active_ids, withdrawn_ids = _expected_opt_outs(practice)
        active = _pseudonyms_of(practice, active_ids, key)
        withdrawn = _pseudonyms_of(practice, withdrawn_ids, key)
        manifest: dict[str, Any] = clean_columnar_packages.manifests[practice.name]
        assert set(manifest["type1_opt_out"]["active"]) == active
        assert set(manifest["type1_opt_out"]["withdrawn"]) == withdrawn
        written = tables(clean_columnar_packages.packages / practice.name)
        for name, table in written.items():
            if "patient" in table.column_names:
                present = set(table["patient"].unique().to_pylist())
                assert not present & active, f"a Type 1 patient's rows in {name}"
        restored = set(written["patients"]["patient"].to_pylist()) & withdrawn
        assert restored == withdrawn
        with_events = set(written["clinical_events"]["patient"].unique().to_pylist())
        assert len(with_events & withdrawn) >= 0.8 * len(withdrawn)
        seen_active += len(active)
        seen_withdrawn += len(withdrawn)
    assert seen_active > 50 and seen_withdrawn > 10  # the nation has both, so this can fail


def test_the_ten_year_cut_off_holds_and_only_where_the_spec_says(
    clean_columnar: Made, clean_columnar_packages: Extracted
) -> None:
    for practice in practice_folders(clean_columnar.root)[:2]:
        manifest: dict[str, Any] = clean_columnar_packages.manifests[practice.name]
        cut_off = date.fromisoformat(manifest["window"]["retention_from"])
        assert cut_off == date(2016, 10, 31)
        written = tables(clean_columnar_packages.packages / practice.name)
        for name, column in [
            ("medications", "issue_date"),
            ("referrals", "referral_date"),
            ("appointments", "start"),
        ]:
            dates = written[name][column]
            if pa.types.is_timestamp(dates.type):
                dates = dates.cast(pa.date32())
            assert pc.min(dates).as_py() >= cut_off, name
            source = pq.read_table(practice / f"{name}.parquet")[column]
            if pa.types.is_timestamp(source.type):
                source = source.cast(pa.date32())
            assert pc.min(source).as_py() < cut_off  # there was something to cut
        events = written["clinical_events"]["effective_date"]
        assert pc.min(events).as_py() < cut_off  # diagnoses keep the whole record


def test_restricted_and_sensitive_codes_stay_and_sensitive_sets_are_configurable(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    excluded = SPEC.excluded_codes()
    practice = practice_folders(clean_columnar.root)[0]
    written = tables(clean_columnar_packages.packages / practice.name)
    for name, table in written.items():
        for column in ("code", "procedure_code", "vaccine_code"):
            if column in table.column_names:
                assert not set(table[column].unique().to_pylist()) & set(excluded), name
    manifest: dict[str, Any] = clean_columnar_packages.manifests[practice.name]
    assert manifest["excluded"]["sensitive_code:sexually_transmitted_infection"] > 0

    text = (Path(specification.__file__).parent / "specification.toml").read_text()
    collecting = text.replace(
        'rule = "sensitive"\ncollect = false\nreason = "Often',
        'rule = "sensitive"\ncollect = true\nreason = "Often',
    )
    assert collecting != text
    alternative = tmp_path / "spec.toml"
    alternative.write_text(collecting)
    other = run(practice, tmp_path / "package", keys, spec=alternative)
    assert other["sensitive_sets_collected"] == ["sexually_transmitted_infection"]
    assert other["specification"]["sha256"] != manifest["specification"]["sha256"]
    sti = {c.code for c in SPEC.code_sets["sexually_transmitted_infection"].codes}
    codes = set(tables(tmp_path / "package")["clinical_events"]["code"].unique().to_pylist())
    assert codes & sti
    assert not codes & (set(excluded) - sti)


def test_pseudonyms_are_stable_under_one_key_and_unrelated_under_another(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    practice = practice_folders(clean_columnar.root)[1]
    first = tables(clean_columnar_packages.packages / practice.name)
    again = tables(tmp_path / "again") if run(practice, tmp_path / "again", keys) else {}
    other = Keys(tmp_path / "other-keys")
    rekeyed = tables(tmp_path / "rekeyed") if run(practice, tmp_path / "rekeyed", other) else {}
    for name in ("patients", "clinical_events", "staff"):
        column = "staff" if name == "staff" else "patient"
        assert first[name][column].equals(again[name][column]), name
        assert not set(first[name][column].to_pylist()) & set(rekeyed[name][column].to_pylist())
    postcodes = set(first["patients"]["postcode_key"].to_pylist())
    assert not postcodes & set(rekeyed["patients"]["postcode_key"].to_pylist())


def test_a_person_registered_at_two_practices_has_one_pseudonym(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys
) -> None:
    key = keys
    movers = {
        nhs
        for (nhs,) in _select(
            f"""
            select nhs_number from '{clean_columnar.root}/*/patients.parquet'
            group by nhs_number having count(*) > 1
            """
        ).fetchall()
    }
    assert len(movers) > 20, "the synthetic nation has people who moved practice"
    checked = 0
    for practice in practice_folders(clean_columnar.root):
        held = set(pq.read_table(practice / "patients.parquet")["nhs_number"].to_pylist())
        manifest: dict[str, Any] = clean_columnar_packages.manifests[practice.name]
        sent = set(
            tables(clean_columnar_packages.packages / practice.name)["patients"][
                "patient"
            ].to_pylist()
        )
        sent |= set(manifest["type1_opt_out"]["active"])
        for nhs in movers & held:
            assert _pseudonym(key, nhs) in sent  # the same code at every practice that holds them
            checked += 1
    assert checked >= 2 * 20


def test_coarsening_year_month_of_birth_and_small_area(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys
) -> None:
    key = keys
    practice = practice_folders(clean_columnar.root)[0]
    source = pq.read_table(practice / "patients.parquet").to_pylist()
    written = {
        r["patient"]: r
        for r in tables(clean_columnar_packages.packages / practice.name)["patients"].to_pylist()
    }
    geography = {
        postcode: (lsoa, int(decile))
        for postcode, lsoa, decile in _select(
            "select postcode, lsoa_code, imd_decile "
            "from read_csv('src/gpdpr/synth/data/geography.csv', all_varchar=true)"
        ).fetchall()
    }
    checked = 0
    for person in source:
        row = written.get(_pseudonym(key, person["nhs_number"]))
        if row is None:
            continue  # Type 1
        born = person["date_of_birth"]
        assert (row["birth_year"], row["birth_month"]) == (born.year, born.month)
        assert (row["lsoa_code"], row["imd_decile"]) == geography[person["postcode"]]
        assert row["linkable"] is True
        checked += 1
    assert checked > 1000


# ---- incremental extracts -------------------------------------------------------------------


def _amend(practice: Path, into: Path, later: datetime) -> dict[str, set[str]]:
    """A copy of the practice a fortnight on: some entries corrected, some marked entered in
    error, one patient newly opted out, one opt-out withdrawn. Returns what changed."""
    shutil.copytree(practice, into)
    events = pq.read_table(into / "clinical_events.parquet")
    rows = events.to_pylist()
    active, _ = _expected_opt_outs(practice)
    restored_patient = sorted(active)[0]
    ordinary = [
        r
        for r in rows
        if r["status"] == "active"
        and r["code"] not in (DISSENT, WITHDRAWN)
        and r["patient_id"] not in active
    ]
    corrected = ordinary[100:130]
    in_error = ordinary[200:210]
    newly_out = ordinary[500]["patient_id"]
    for r in corrected:
        r["value"], r["last_modified"] = 42.0, later
    for r in in_error:
        r["status"], r["last_modified"] = "entered-in-error", later
    next_id = max(r["event_id"] for r in rows) + 1
    template = dict(ordinary[0])
    for patient, code, event_id in [
        (newly_out, DISSENT, next_id),
        (restored_patient, WITHDRAWN, next_id + 1),
    ]:
        rows.append(
            {
                **template,
                "event_id": event_id,
                "patient_id": patient,
                "category": "observation",
                "code": code,
                "effective_date": later.date(),
                "recorded_at": later,
                "value": None,
                "unit": None,
                "free_text": None,
                "last_modified": later,
            }
        )
    pq.write_table(
        pa.Table.from_pylist(rows, schema=events.schema), into / "clinical_events.parquet"
    )
    about = json.loads((into / "extract.json").read_text())
    about["extracted_at"] = later.strftime("%Y-%m-%dT%H:%M:%SZ")
    (into / "extract.json").write_text(json.dumps(about))
    return {
        "corrected": {str(r["event_id"]) for r in corrected},
        "in_error": {str(r["event_id"]) for r in in_error},
        "newly_out": {str(newly_out)},
        "restored": {str(restored_patient)},
    }


def test_an_incremental_extract_sends_changes_deletions_and_opt_out_changes(
    clean_columnar: Made, clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    practice = practice_folders(clean_columnar.root)[2]
    later = datetime(2026, 11, 14, 10, 0, 0)
    changed = _amend(practice, tmp_path / practice.name, later)
    manifest = run(
        tmp_path / practice.name,
        tmp_path / "incremental",
        keys,
        since=datetime(2026, 10, 31, 23, 59, 59),
    )
    assert manifest["kind"] == "incremental"
    assert manifest["window"] == {
        "since": "2026-10-31T23:59:59Z",
        "until": "2026-11-14T10:00:00Z",
        "retention_from": "2016-11-14",
        "retention_tables": ["medications", "referrals", "appointments"],
    }
    written = tables(tmp_path / "incremental")
    deleted = set(written["deletions"]["record_id"].to_pylist())
    ods = practice.name
    assert record_pseudonyms(keys, ods, "clinical_events", changed["in_error"]) <= deleted

    key = keys
    newly_out = _pseudonyms_of(practice, {int(p) for p in changed["newly_out"]}, key)
    restored = _pseudonyms_of(practice, {int(p) for p in changed["restored"]}, key)
    assert newly_out <= set(manifest["type1_opt_out"]["active"])
    assert restored <= set(manifest["type1_opt_out"]["withdrawn"])
    # The restored patient's whole record comes back; of everyone else only what changed.
    events = written["clinical_events"]
    restored_rows = events.filter(pc.is_in(events["patient"], pa.array(sorted(restored))))
    before = _select(
        f"""
        select count(*) from '{practice}/clinical_events.parquet'
        where patient_id = {next(iter(changed["restored"]))} and status = 'active'
          and code not in ('{DISSENT}', '{WITHDRAWN}')
          and code not in ({", ".join(repr(c) for c in SPEC.excluded_codes())})
        """
    ).fetchall()[0]
    assert restored_rows.num_rows == before[0] > 0
    others = events.filter(pc.invert(pc.is_in(events["patient"], pa.array(sorted(restored)))))
    sent = set(others["record_id"].to_pylist())
    corrected = record_pseudonyms(keys, ods, "clinical_events", changed["corrected"])
    assert sent <= corrected
    assert len(sent) >= len(corrected) - 2  # less any of the newly opted out's
    assert set(others["value"].to_pylist()) == {42.0}
    medications = set(written["medications"]["patient"].to_pylist())
    assert medications and medications <= restored  # nothing else changed
    assert manifest["unchanged_since_watermark"]["medications"] > 0


def test_a_watermark_is_a_time_or_the_previous_package(
    clean_columnar_packages: Extracted, tmp_path: Path
) -> None:
    package = next(iter(p for p in clean_columnar_packages.packages.iterdir() if p.is_dir()))
    assert parse_watermark(str(package)) == datetime(2026, 10, 31, 23, 59, 59)
    assert parse_watermark("2026-11-01T00:00:00+01:00") == datetime(2026, 10, 31, 23, 0, 0)
    with pytest.raises(UserError, match="neither a date/time"):
        parse_watermark("last tuesday")
    with pytest.raises(UserError, match="not an extract package"):
        parse_watermark(str(tmp_path))
