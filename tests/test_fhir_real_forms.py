"""Forms real GP exports take that the first boundary work left open: opt-outs no longer in force,
references by identifier only, UK Core patient extensions, partial dates kept at their precision,
and Bundles as a Bulk Data export lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extracting import Keys, patient_pseudonym, run
from fhir_exports import ODS, coded, nhs_number, patient, records, subject, support, write
from gpdpr import spec as specification

SPEC = specification.shipped()
DISSENT = SPEC.dissent.code


def extract(tmp_path: Path, keys: Keys, resources: list[Any], **kwargs: Any) -> dict[str, Any]:
    folder = write(tmp_path / "export" / ODS, resources, **kwargs)
    return run(folder, tmp_path / "package", keys)


def pseudonym(keys: Keys, n: int) -> str:
    return patient_pseudonym(keys, nhs_number(n).replace(" ", ""))


def people(n: int) -> list[dict[str, Any]]:
    out = support()
    for i in range(1, n + 1):
        out += [patient(f"p{i}", i), *records(f"p{i}")]
    return out


# ---- 1. opt-outs no longer in force --------------------------------------------------------------


def consent(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"{pid}-consent",
        "status": "active",
        "patient": subject(pid),
        "dateTime": "2022-01-01",
        "provision": {"type": "deny", "code": [coded(DISSENT)]},
    } | extra


def flag(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": f"{pid}-flag",
        "status": "active",
        "subject": subject(pid),
        "code": coded(DISSENT),
        "period": {"start": "2022-01-01"},
    } | extra


# Patient -> (their only opt-out entry, whether it still counts as a dissent). The export was taken
# on 2026-10-31.
FORMS: dict[str, tuple[dict[str, Any], bool]] = {
    "p1": (consent("p1"), True),
    "p2": (consent("p2", status="inactive"), False),
    "p3": (consent("p3", status="rejected"), False),
    "p4": (consent("p4", status="entered-in-error"), False),
    "p5": (
        consent("p5", provision={"code": [coded(DISSENT)], "period": {"end": "2024-05-01"}}),
        False,
    ),
    # An end known only to the year of the extract has not passed yet: the dissent stands.
    "p6": (consent("p6", provision={"code": [coded(DISSENT)], "period": {"end": "2026"}}), True),
    # A status that says nothing of being out of force (a draft) leaves the dissent standing.
    "p7": (consent("p7", status="draft"), True),
    "p8": (flag("p8"), True),
    "p9": (flag("p9", status="inactive"), False),
    "p10": (flag("p10", status="entered-in-error"), False),
    "p11": (flag("p11", period={"start": "2022-01-01", "end": "2025-12-31"}), False),
    "p12": (flag("p12", period={"start": "2022-01-01", "end": "2027-01-01"}), True),
    "p13": (flag("p13", status=None), True),
}


def test_an_inactive_consent_or_flag_is_not_a_dissent_and_an_active_one_is(
    tmp_path: Path, keys: Keys
) -> None:
    resources = people(len(FORMS))
    for entry, _ in FORMS.values():
        resources.append({k: v for k, v in entry.items() if v is not None})
    manifest = extract(tmp_path, keys, resources)
    active = set(manifest["type1_opt_out"]["active"])
    for n, (pid, (_, dissent)) in enumerate(FORMS.items(), start=1):
        assert (pseudonym(keys, n) in active) == dissent, pid
    assert manifest["tables"]["patients"]["rows"] == sum(not d for _, d in FORMS.values())


def test_an_inactive_dissent_does_not_outweigh_an_active_one(tmp_path: Path, keys: Keys) -> None:
    resources = [
        *people(1),
        consent("p1", id="old", status="inactive", dateTime="2025-01-01"),
        flag("p1", period={"start": "2020-01-01"}),
    ]
    manifest = extract(tmp_path, keys, resources)
    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 1)]
    assert manifest["tables"]["patients"]["rows"] == 0


@pytest.mark.parametrize("status", ["inactive", "entered-in-error"])
def test_an_inactive_withdrawal_does_not_release_a_dissent(
    tmp_path: Path, keys: Keys, status: str
) -> None:
    withdrawn = SPEC.dissent_withdrawn.code
    resources = [
        *people(1),
        flag("p1", period={"start": "2020-01-01"}),
        consent("p1", status=status, dateTime="2024-01-01", provision={"code": [coded(withdrawn)]}),
    ]
    manifest = extract(tmp_path, keys, resources)
    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 1)]
