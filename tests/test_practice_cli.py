"""`gpdpr practice extract` and `verify` as an operator meets them: bad input, tampering, crashes.

Every refusal is one line on stderr with exit code 2, and leaves no package, no staging folder and
no quarantine file behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest

from conftest import Made
from extracting import Keys, record_pseudonyms, run, tables
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.kit import read_public_key
from gpdpr.practice.package import PackageError, verify
from readers import practice_folders

GPDPR = [sys.executable, "-m", "gpdpr"]


def gpdpr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPDPR, *args], capture_output=True, text=True, timeout=600)


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def nothing_left(where: Path, out: Path) -> None:
    assert not out.exists()
    assert not quarantine_path(out).exists()
    assert not list(where.glob(f".{out.name}.partial-*"))


def extract_args(practice: Path, out: Path, kit: Path) -> list[str]:
    return ["practice", "extract", str(practice), "--out", str(out), "--keys", str(kit)]


@pytest.fixture
def fhir_practice(clean_fhir: Made, tmp_path: Path) -> Path:
    """A copy of a FHIR practice to damage."""
    source = practice_folders(clean_fhir.root)[1]
    shutil.copytree(source, tmp_path / source.name)
    return tmp_path / source.name


@pytest.fixture
def columnar_practice(clean_columnar: Made, tmp_path: Path) -> Path:
    source = practice_folders(clean_columnar.root)[1]
    shutil.copytree(source, tmp_path / source.name)
    return tmp_path / source.name


def test_a_good_extract_reports_and_verifies(
    columnar_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    out = tmp_path / "package"
    result = gpdpr(*extract_args(columnar_practice, out, keys.kit(columnar_practice.name)))
    assert result.returncode == 0, result.stderr
    assert "What happened to each record" in result.stdout
    assert "Type 1 opt-outs" in result.stdout
    public = keys.kit(columnar_practice.name) / "signing.pub"
    checked = gpdpr("practice", "verify", str(out), "--public-key", str(public))
    assert checked.returncode == 0 and "verified" in checked.stdout


def test_without_a_key_kit_nothing_is_extracted(columnar_practice: Path, tmp_path: Path) -> None:
    out = tmp_path / "package"
    refused(
        gpdpr(*extract_args(columnar_practice, out, tmp_path / "no-kit")),
        "the key custodian issues one with `gpdpr custodian issue-practice ODS`",
    )
    nothing_left(tmp_path, out)
    env_free = subprocess.run(
        [*GPDPR, "practice", "extract", str(columnar_practice), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert env_free.returncode == 2 and "--keys" in env_free.stderr
    nothing_left(tmp_path, out)


def test_a_kit_issued_to_another_practice_is_refused(
    columnar_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    out = tmp_path / "package"
    refused(
        gpdpr(*extract_args(columnar_practice, out, keys.kit("Z99999"))),
        "was issued to Z99999",
    )
    nothing_left(tmp_path, out)


def test_keys_kept_inside_the_data_are_refused(
    columnar_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    inside = columnar_practice / "keys"
    shutil.copytree(keys.kit(columnar_practice.name), inside)
    out = tmp_path / "package"
    refused(gpdpr(*extract_args(columnar_practice, out, inside)), "keys must never sit with data")
    nothing_left(tmp_path, out)


def test_an_empty_folder_has_no_records(keys: Keys, tmp_path: Path) -> None:
    empty = tmp_path / "Z10001"
    empty.mkdir()
    out = tmp_path / "package"
    refused(gpdpr(*extract_args(empty, out, keys.kit("Z10001"))), "holds no records")
    nothing_left(tmp_path, out)


def test_an_existing_package_is_never_overwritten(
    columnar_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    out = tmp_path / "package"
    out.mkdir()
    (out / "precious").write_text("earlier work")
    refused(
        gpdpr(*extract_args(columnar_practice, out, keys.kit(columnar_practice.name))),
        "packages are never overwritten",
    )
    assert (out / "precious").read_text() == "earlier work"


def test_a_damaged_parquet_file_is_a_clear_error(
    columnar_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    damaged = columnar_practice / "clinical_events.parquet"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    out = tmp_path / "package"
    refused(
        gpdpr(*extract_args(columnar_practice, out, keys.kit(columnar_practice.name))),
        "clinical_events.parquet",
    )
    nothing_left(tmp_path, out)


def test_an_unreadable_file_found_midway_leaves_nothing_behind(
    fhir_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    """Patients are already written when the medicines file turns out unreadable."""
    medicines = fhir_practice / "MedicationRequest.ndjson"
    medicines.unlink()
    medicines.mkdir()
    out = tmp_path / "package"
    refused(gpdpr(*extract_args(fhir_practice, out, keys.kit(fhir_practice.name))), "cannot read")
    nothing_left(tmp_path, out)


def test_a_stopped_extract_leaves_nothing_behind(
    fhir_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    """Stopped while it waits for the custodian: a service that takes the request and never
    answers holds the extract there, package folder begun, until the signal (a timed pause
    instead sometimes let the extract finish first)."""
    out = tmp_path / "package"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(120)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        args = [*extract_args(fhir_practice, out, keys.kit(fhir_practice.name)), "--custodian", url]
        process = subprocess.Popen(
            [*GPDPR, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        connection, _ = silent.accept()
        with connection:
            assert list(tmp_path.glob(".package.partial-*")), "the extract never started writing"
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err.decode()
    nothing_left(tmp_path, out)


def test_lines_that_are_not_records_are_quarantined_by_position(
    fhir_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    observations = fhir_practice / "Observation.ndjson"
    lines = observations.read_bytes().splitlines()
    patient = orjson.loads(lines[0])["subject"]
    extra = [
        b"[1, 2, 3]",
        orjson.dumps({"resourceType": "Patient", "id": "wrong-file"}),
        orjson.dumps({"resourceType": "Observation", "status": "final", "subject": patient}),
        orjson.dumps({**orjson.loads(lines[1]), "id": "no-subject-here", "subject": None}),
        orjson.dumps(
            {**orjson.loads(lines[2]), "id": "stranger", "subject": {"reference": "Patient/nobody"}}
        ),
        b"",
        orjson.dumps(
            {**orjson.loads(lines[3]), "id": "bad-date", "effectiveDateTime": "2024-02-30"}
        ),
        orjson.dumps(
            {
                **orjson.loads(lines[4]),
                "id": "odd-types",
                "valueQuantity": {"value": "high", "unit": 5, "code": ["mmHg"]},
            }
        ),
    ]
    observations.write_bytes(b"\n".join([*lines, *extra]) + b"\n")
    about = orjson.loads((fhir_practice / "export.json").read_bytes())
    for entry in about["output"]:  # as the server would have listed the file
        if entry["type"] == "Observation":
            entry["count"] = len(lines) + len(extra) - 1
    (fhir_practice / "export.json").write_bytes(orjson.dumps(about))
    out = tmp_path / "package"
    manifest = run(fhir_practice, out, keys)
    found = {
        (q["position"], q["reason"])
        for q in map(orjson.loads, quarantine_path(out).read_bytes().splitlines())
        if q["source"] == "Observation.ndjson"
    }
    n = len(lines)
    assert found == {
        (n + 1, "not a FHIR resource (not a JSON object)"),
        (n + 2, "a resource of another type than its file holds"),
        (n + 3, "resource has no id"),
        (n + 4, "no patient (subject) given"),
        (n + 5, "patient not registered at this practice"),
        (n + 7, "a date or time that cannot be read"),
    }
    assert manifest["quarantined"]["rows"] == 6
    events = tables(out)["clinical_events"]
    assert events.num_rows > 1000
    (odd_id,) = record_pseudonyms(keys, fhir_practice.name, "clinical_events", ["odd-types"])
    odd = events.filter(pc.equal(events["record_id"], odd_id)).to_pylist()
    assert [(r["value"], r["unit"]) for r in odd] == [(None, None)]  # kept, odd values dropped


# ---- tampering ---------------------------------------------------------------------------------


@pytest.fixture
def package(columnar_practice: Path, keys: Keys, tmp_path: Path) -> Path:
    out = tmp_path / "package"
    run(columnar_practice, out, keys)
    return out


def test_an_intact_package_verifies(package: Path, keys: Keys, columnar_practice: Path) -> None:
    manifest = verify(package, read_public_key(keys.kit(columnar_practice.name) / "signing.pub"))
    assert set(manifest["files"]) == {p.name for p in package.iterdir()} - {
        "manifest.json",
        "manifest.sig",
    }


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _raise_count(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["tables"]["patients"]["rows"] += 1
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda p: _flip_a_byte(p / "clinical_events.parquet"),
            "clinical_events.parquet does not match its SHA-256",
        ),
        (lambda p: _raise_count(p / "manifest.json"), "signature does not verify"),
        (
            lambda p: (p / "extra.parquet").write_bytes(b"PAR1"),
            "extra.parquet are not in the manifest",
        ),
        (lambda p: (p / "referrals.parquet").unlink(), "referrals.parquet is missing"),
        (lambda p: (p / "manifest.sig").unlink(), "has no manifest.sig"),
        (lambda p: (p / "manifest.sig").write_text("{}"), "manifest.sig is damaged"),
    ],
)
def test_a_tampered_package_is_refused(
    package: Path, keys: Keys, columnar_practice: Path, tamper: object, message: str
) -> None:
    tamper(package)  # type: ignore[operator]
    public = keys.kit(columnar_practice.name) / "signing.pub"
    with pytest.raises(PackageError, match=message):
        verify(package, read_public_key(public))
    refused(gpdpr("practice", "verify", str(package), "--public-key", str(public)), message)


def test_a_package_signed_by_another_practice_is_refused(package: Path, keys: Keys) -> None:
    with pytest.raises(PackageError, match="signature does not verify"):
        verify(package, read_public_key(keys.kit("Z99998") / "signing.pub"))


def test_records_without_a_known_recorder_keep_the_record_without_saying_who(
    fhir_practice: Path, keys: Keys, tmp_path: Path
) -> None:
    (fhir_practice / "Practitioner.ndjson").unlink()
    (fhir_practice / "PractitionerRole.ndjson").unlink()
    about = orjson.loads((fhir_practice / "export.json").read_bytes())
    about["output"] = [o for o in about["output"] if not o["type"].startswith("Practitioner")]
    (fhir_practice / "export.json").write_bytes(orjson.dumps(about))
    out = tmp_path / "package"
    manifest = run(fhir_practice, out, keys)
    written = tables(out)
    assert written["staff"].num_rows == 0
    events = written["clinical_events"]
    assert events.num_rows > 1000 and events["staff"].null_count == events.num_rows
    assert manifest["quarantined"]["rows"] == 0
