"""`gpdpr practice extract`: one practice's records in, one signed extract package out.

The package is built in a staging folder beside its destination and renamed into place only when
it is complete and signed, so a crash or a refusal leaves nothing that looks like a package. The
quarantine file (records that could not be read, with their place and reason, never their content)
stays beside the package, at the practice.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from gpdpr import spec as specification
from gpdpr.errors import UserError
from gpdpr.practice import columnar, custodian_client, fhir
from gpdpr.practice.kit import PracticeKit, read_kit
from gpdpr.practice.package import DELETIONS, DELETIONS_SCHEMA, FORMAT, TableWriter, seal
from gpdpr.practice.pseudonyms import (
    METHOD,
    Pseudonymiser,
    postcode_input,
    record_key_input,
    staff_input,
)
from gpdpr.practice.resend import read_resend_list
from gpdpr.practice.rules import (
    Geography,
    Quarantined,
    Rules,
    StaffIndex,
    Tally,
    Window,
    check_supported,
    opt_outs,
    window_for,
    writing_schema,
)
from gpdpr.practice.source import RECORD_TABLES, Batch, Reader, Staff, utc_naive
from gpdpr.terminology import sets

QUARANTINE_SUFFIX = ".quarantine.ndjson"
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class ExtractRequest:
    practice: Path
    out: Path
    keys: Path
    since: datetime | None = None
    spec: Path | None = None
    resend: Path | None = None  # the centre's resend list (see resend.py)
    custodian: str | None = None  # the pseudonym service's address, if not the kit's


def quarantine_path(out: Path) -> Path:
    return out.parent / f"{out.name}{QUARANTINE_SUFFIX}"


def open_reader(
    folder: Path, spec: specification.Specification, ods_code: str | None = None
) -> Reader:
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the practice's extract folder")
    if columnar.is_columnar(folder):
        return columnar.ColumnarReader(folder)
    if fhir.is_fhir(folder):
        return fhir.FhirReader(folder, spec, ods_code)
    raise UserError(
        f"{folder} holds no records: expected a FHIR Bulk Data export (export.json and *.ndjson) "
        "or a supplier's columnar extract (extract.json and *.parquet)"
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_places(request: ExtractRequest) -> None:
    for data in (request.practice, request.out):
        if _inside(request.keys, data):
            raise UserError(
                f"the key folder {request.keys} is inside {data}: keys must never sit with data. "
                "Keep the practice's key kit somewhere else"
            )
    if _inside(request.out, request.practice):
        raise UserError(f"--out {request.out} is inside the practice folder; write it elsewhere")
    if request.out.exists():
        raise UserError(
            f"{request.out} already exists: packages are never overwritten. Choose a new --out"
        )


def extract(request: ExtractRequest, on_progress: Progress | None = None) -> dict[str, Any]:
    """Build, sign and place the package; return its manifest. UserError for anything the
    operator can fix, with nothing left behind."""
    spec = specification.load(request.spec)
    check_supported(spec)
    _check_places(request)
    kit = read_kit(request.keys)
    reader = open_reader(request.practice, spec, kit.ods_code)
    try:
        return _extract(request, spec, kit, reader, on_progress)
    finally:
        reader.close()


def _extract(
    request: ExtractRequest,
    spec: specification.Specification,
    kit: PracticeKit,
    reader: Reader,
    on_progress: Progress | None,
) -> dict[str, Any]:
    practice = reader.practice
    if kit.ods_code != practice.ods_code:
        raise UserError(
            f"the key kit {request.keys} was issued to {kit.ods_code}, but {request.practice} "
            f"is the extract of {practice.ods_code}; use that practice's kit"
        )
    window = window_for(spec, practice.extracted_at, request.since)
    resend = read_resend_list(request.resend) if request.resend else frozenset()
    out = request.out
    staging = out.resolve().parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir(parents=False)
    except OSError as exc:
        raise UserError(f"cannot write beside {out}: {exc.strerror or exc}") from None
    try:
        pseudonymiser = Pseudonymiser(
            lambda inputs: custodian_client.evaluate(kit, inputs, request.custodian),
            practice.ods_code,
        )
        manifest, quarantined = _build(
            spec, kit, reader, window, staging, on_progress, pseudonymiser, resend
        )
        seal(staging, manifest, kit.signing)
        _write_quarantine(quarantine_path(out), quarantined)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not out.exists():  # a quarantine file without its package would only mislead
            quarantine_path(out).unlink(missing_ok=True)
        raise
    return manifest


def _build(
    spec: specification.Specification,
    kit: PracticeKit,
    reader: Reader,
    window: Window,
    folder: Path,
    on_progress: Progress | None,
    pseudonymiser: Pseudonymiser,
    resend: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[Quarantined]]:
    practice = reader.practice
    tally = Tally()
    quarantined: list[Quarantined] = []
    rules = Rules(spec, window, pseudonymiser, tally, quarantined, resend)
    codes = set(spec.dissent_codes() | spec.withdrawal_codes())
    opt = opt_outs(reader.opt_out_events(codes), spec, window.since)

    writers = {
        name: TableWriter(folder / f"{name}.parquet", writing_schema(table))
        for name, table in spec.tables.items()
    }
    deletions = TableWriter(folder / f"{DELETIONS}.parquet", DELETIONS_SCHEMA)
    try:
        staff_list = reader.staff()
        patient_batches = list(reader.patients())
        _prepare(pseudonymiser, staff_list, patient_batches)
        staff = StaffIndex.build(staff_list, pseudonymiser)
        if "staff" in writers:
            writers["staff"].write(staff.table(spec.tables["staff"], tally.replaced))
        index, patients, active, withdrawn = rules.patients(
            patient_batches, opt, Geography.load(spec)
        )
        del patient_batches
        writers["patients"].write(patients)
        rules.table_done("patients")
        _progress(on_progress, "patients", len(index.refs))
        for table in RECORD_TABLES:
            if table not in writers:
                continue
            for batch in reader.records(table):
                writers[table].write(rules.records(table, batch, index, staff))
                _progress(on_progress, table, batch.table.num_rows)
            rules.table_done(table)
        for fault in reader.faults():
            name = None
            if fault.record_id is not None:
                table = fhir.table_of(fault.resource_type)
                name = pseudonymiser.records(table, [fault.record_id])[0]
            quarantined.append(
                Quarantined(
                    fault.source,
                    fault.position,
                    fault.record_id,
                    fault.reason,
                    fault.resource_type,
                    name,
                    fault.path,
                )
            )
        if rules.deletions:
            tables, ids = zip(*rules.deletions, strict=True)  # ids already keyed pseudonyms
            deletions.write(
                pa.table({"table": list(tables), "record_id": list(ids)}, schema=DELETIONS_SCHEMA)
            )
    finally:
        for writer in [*writers.values(), deletions]:
            writer.close()

    by_reason = Counter(q.reason for q in quarantined)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "package_id": str(uuid.uuid4()),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "practice": {"ods_code": practice.ods_code},
        "kind": window.kind,
        "source_format": practice.format,
        "window": {
            "since": _instant(window.since),
            "until": _instant(window.extracted_at),
            "retention_from": window.retention_from.isoformat(),
            "retention_tables": list(spec.retention_tables),
        },
        "specification": {"version": spec.version, "sha256": spec.sha256},
        "terminology": sets.record(
            rules.release, spec.code_set_expressions(), tally.not_in_release
        ),
        "sensitive_sets_collected": sorted(
            n for n, s in spec.code_sets.items() if s.rule == "sensitive" and s.collect
        ),
        "pseudonymisation": {
            "method": METHOD,
            "pseudonym_key_id": kit.pseudonym_key_id,
            "evaluations": pseudonymiser.evaluations,
        },
        "signing_key_id": kit.signing_key_id,
        "tables": {name: {"file": w.path.name, "rows": w.rows} for name, w in writers.items()},
        "deletions": {"file": deletions.path.name, "rows": deletions.rows},
        "excluded": dict(sorted(tally.excluded.items())),
        "excluded_by_table": {
            t: dict(sorted(c.items())) for t, c in sorted(tally.excluded_by_table.items())
        },
        "unchanged_since_watermark": dict(sorted(tally.unchanged.items()))
        if window.since is not None
        else {},
        "quarantined": {"rows": len(quarantined), "by_reason": dict(sorted(by_reason.items()))},
        "replaced_outside_allowlist": dict(sorted(tally.replaced.items())),
        "not_read": dict(sorted(practice.not_read.items())),
        "type1_opt_out": {
            "active": active,
            "withdrawn": withdrawn,
            "registered": sorted(p for p in (*active, *withdrawn) if p in rules.registered),
        },
        "resent_on_request": rules.resent_on_request,
    }
    return manifest, quarantined


def _prepare(pseudonymiser: Pseudonymiser, staff: Staff, batches: list[Batch]) -> None:
    """Every input the extract will need a pseudonym for, to the custodian in one round trip:
    the record key, the staff, and every patient row read and their postcodes (a row the rules
    later set aside costs one evaluation it did not need, never a second round trip)."""
    ods = pseudonymiser.ods
    inputs = [record_key_input(ods)]
    inputs += [
        staff_input(ods, sds, ref) for ref, sds in zip(staff.refs, staff.sds_user_ids, strict=True)
    ]
    for batch in batches:
        table = batch.table
        made, _ = pseudonymiser.patient_inputs(
            table["nhs_number"], table["patient_ref"].to_pylist()
        )
        inputs += made
        inputs += [postcode_input(p) for p in table["postcode"].to_pylist() if p]
    pseudonymiser.prepare(inputs)


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(on_progress: Progress | None, table: str, rows: int) -> None:
    if on_progress is not None:
        on_progress(table, rows)


def _write_quarantine(path: Path, rows: list[Quarantined]) -> None:
    """One JSON line per quarantined record: where it is (file, line, resource type, the FHIR
    element at fault), its id in the practice's system and as the keyed code the centre would
    know it by, and why; never its content. This file stays at the practice."""
    lines = [
        orjson.dumps(
            {
                "source": q.source,
                "position": q.position,
                "record_id": q.record_id,
                "reason": q.reason,
                "resource_type": q.resource_type,
                "id_pseudonym": q.id_pseudonym,
                "path": q.path,
            }
        )
        for q in sorted(rows, key=lambda q: (q.source, q.position))
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    tmp.replace(path)


def parse_watermark(text: str) -> datetime:
    """--since: an ISO date or time (UTC), or an earlier package whose window ends there."""
    path = Path(text)
    if path.is_dir():
        try:
            manifest = orjson.loads((path / "manifest.json").read_bytes())
            text = str(manifest["window"]["until"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"--since {path}: not an extract package with a manifest") from None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--since {text!r} is neither a date/time like 2026-10-31T23:59:59Z nor a package "
            "folder"
        ) from None
    return utc_naive(value)
