"""A Bulk Data `$export` as a server writes it (FHIR Bulk Data Access, the manifest's fields):
file names the server chose, typed only by the manifest's `output` list, several per type, with
`requiresAccessToken`, `request` and `extension`; an `error` list of OperationOutcome files; a
`deleted` list of Bundles of deletions. The export extracts unchanged, what the server says
went wrong stops it, and nothing a manifest names becomes a path outside the export folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from extracting import Keys, run, tables
from fhir_exports import ODS, practice, write
from gpdpr.errors import UserError

SERVER = "https://fhir.example.nhs.uk/bulk/4f1c"


def as_served(folder: Path, into: Path) -> dict[str, Any]:
    """The export in `folder` as a server lays it out: each file under a name of its own
    choosing (`output_<n>.ndjson`), the type given only in the manifest. Its manifest."""
    into.mkdir(parents=True)
    about: dict[str, Any] = orjson.loads((folder / "export.json").read_bytes())
    for n, item in enumerate(about["output"], start=1):
        name = item["url"].rsplit("/", 1)[-1]
        shutil.copy(folder / name, into / f"output_{n}.ndjson")
        item["url"] = f"{SERVER}/output_{n}.ndjson"
    about |= {
        "requiresAccessToken": True,
        "request": f"https://fhir.example.nhs.uk/Group/{ODS}/$export?_type=Patient,Condition",
        "extension": {"https://example.org/supplier-build": "9.1"},
        "error": [],
        "deleted": [],
    }
    (into / "export.json").write_bytes(orjson.dumps(about))
    return about


def extracted(folder: Path, out: Path, keys: Keys) -> tuple[dict[str, Any], dict[str, int]]:
    manifest = run(folder, out, keys)
    return manifest, {name: t.num_rows for name, t in tables(out).items()}


def test_an_export_as_a_server_names_its_files_extracts_unchanged(
    tmp_path: Path, keys: Keys
) -> None:
    plain = write(tmp_path / "plain" / ODS, practice(4), files_per_type=2)
    served = tmp_path / "served" / ODS
    about = as_served(plain, served)
    assert len({o["type"] for o in about["output"]}) < len(about["output"])  # several per type
    _, expected = extracted(plain, tmp_path / "p1", keys)
    manifest, got = extracted(served, tmp_path / "p2", keys)
    assert got == expected and expected["clinical_events"] > 0
    assert manifest["quarantined"]["rows"] == 0


def operation_outcome(severity: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": "processing", "diagnostics": "Smith 943 476 5919"}
        ],
    }


@pytest.mark.parametrize("severity", ["error", "fatal"])
def test_an_export_the_server_reports_errors_in_is_refused(
    tmp_path: Path, keys: Keys, severity: str
) -> None:
    served = tmp_path / "served" / ODS
    about = as_served(write(tmp_path / "plain" / ODS, practice(2)), served)
    lines = [operation_outcome("information"), operation_outcome(severity)]
    (served / "errors_1.ndjson").write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in lines))
    about["error"] = [{"type": "OperationOutcome", "url": f"{SERVER}/errors_1.ndjson"}]
    (served / "export.json").write_bytes(orjson.dumps(about))
    with pytest.raises(UserError, match="reported 1 error") as refused:
        run(served, tmp_path / "package", keys)
    assert "errors_1.ndjson" in str(refused.value) and "Smith" not in str(refused.value)
    assert not (tmp_path / "package").exists()


def test_messages_that_are_not_errors_neither_stop_the_export_nor_are_read_as_records(
    tmp_path: Path, keys: Keys
) -> None:
    plain = write(tmp_path / "plain" / ODS, practice(2))
    _, expected = extracted(plain, tmp_path / "p1", keys)
    served = tmp_path / "served" / ODS
    about = as_served(plain, served)
    notes = [operation_outcome("information"), operation_outcome("warning")]
    (served / "errors_1.ndjson").write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in notes))
    about["error"] = [{"type": "OperationOutcome", "url": f"{SERVER}/errors_1.ndjson"}]
    (served / "export.json").write_bytes(orjson.dumps(about))
    manifest, got = extracted(served, tmp_path / "p2", keys)
    assert got == expected
    assert manifest["quarantined"]["rows"] == 0


def test_an_export_listing_deletions_is_refused_not_half_applied(
    tmp_path: Path, keys: Keys
) -> None:
    plain = write(tmp_path / "plain" / ODS, practice(2))
    _, expected = extracted(plain, tmp_path / "p1", keys)
    served = tmp_path / "served" / ODS
    about = as_served(plain, served)
    (served / "deleted_1.ndjson").write_bytes(b"")  # a server may list a file of none
    about["deleted"] = [{"type": "Bundle", "url": f"{SERVER}/deleted_1.ndjson"}]
    (served / "export.json").write_bytes(orjson.dumps(about))
    assert extracted(served, tmp_path / "p2", keys)[1] == expected

    deletion = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Condition/p1-c"}}],
    }
    (served / "deleted_1.ndjson").write_bytes(orjson.dumps(deletion) + b"\n")
    with pytest.raises(UserError, match="deleted since"):
        run(served, tmp_path / "p3", keys)
    assert not (tmp_path / "p3").exists()


@pytest.mark.parametrize("url", [f"{SERVER}/..", "../outside.ndjson", f"{SERVER}/a%2F..%2Fb", ""])
def test_a_manifest_cannot_name_a_file_outside_the_export(
    tmp_path: Path, keys: Keys, url: str
) -> None:
    served = tmp_path / "served" / ODS
    about = as_served(write(tmp_path / "plain" / ODS, practice(1)), served)
    (tmp_path / "served" / "outside.ndjson").write_bytes(b"{}\n")
    about["output"].append({"type": "Condition", "url": url})
    (served / "export.json").write_bytes(orjson.dumps(about))
    with pytest.raises(UserError, match="output entry"):
        run(served, tmp_path / "package", keys)
