"""Data-quality faults are planted at --mess-rate, of every kind, where the summary says."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import Made
from gpdpr.supplier.schema import ID_COLUMN, RECORD_TABLES
from gpdpr.synth.records import BOTH_FORMAT_FAULTS, FAULT_NAMES, FHIR_ONLY_FAULTS
from gpdpr.terminology import load_catalogue
from readers import FhirOutput, read_columnar

RATE = 0.02
KINDS = len(BOTH_FORMAT_FAULTS) + len(FHIR_ONLY_FAULTS)
MAIN_DATE = {
    "clinical_events": "effective_date",
    "medications": "issue_date",
    "immunisations": "date",
    "allergies": "onset_date",
    "referrals": "referral_date",
}
CODE = {
    "clinical_events": ("code", "snomed"),
    "medications": ("code", "dmd"),
    "immunisations": ("vaccine_code", "dmd"),
    "allergies": ("code", "snomed"),
    "referrals": ("code", "snomed"),
}


@pytest.fixture(scope="module")
def tables(messy_columnar: Made) -> dict[str, pa.Table]:
    return read_columnar(messy_columnar.root)


def expected(n: int, kinds: int = KINDS) -> tuple[float, float]:
    mean = n * RATE / kinds
    return 0.6 * mean - 5, 1.4 * mean + 5


def test_summary_counts_every_kind_and_they_are_near_the_rate(messy_columnar: Made) -> None:
    rows = messy_columnar.summary.total_rows()
    faults = messy_columnar.summary.total_faults()
    records = sum(rows[t] for t in RECORD_TABLES)
    assert set(faults) == {FAULT_NAMES[k] for k in BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS}
    assert sum(faults.values()) == pytest.approx(records * RATE, rel=0.1)


@pytest.mark.parametrize("table", list(CODE))
def test_columnar_faults_are_in_the_files(
    messy_columnar: Made, tables: dict[str, pa.Table], table: str
) -> None:
    t = tables[table]
    planted = messy_columnar.summary
    per_kind: Counter[str] = Counter()
    for practice in planted.practices:
        per_kind.update(practice.faults.get(table, {}))

    column, system = CODE[table]
    catalogue = load_catalogue()
    unknown = sum(1 for c in t[column].to_pylist() if (system, c) not in catalogue)
    assert unknown == per_kind["unknown_code"]

    assert t["patient_id"].null_count == per_kind["no_subject"]

    ids = Counter(zip(t["ods"].to_pylist(), t[ID_COLUMN[table]].to_pylist(), strict=True))
    repeated = sum(n - 1 for n in ids.values() if n > 1)
    assert repeated == per_kind["duplicate_id"]

    days = t[MAIN_DATE[table]].to_pylist()
    implausible = sum(1 for d in days if d == date(1900, 1, 1) or d > date(2026, 10, 31))
    assert implausible == per_kind["implausible_date"]
    low, high = expected(t.num_rows)
    for kind in ("unknown_code", "no_subject", "duplicate_id", "implausible_date"):
        assert low <= per_kind[kind] <= high, (table, kind, per_kind[kind])


def test_fhir_has_truncated_lines_and_dates_that_do_not_parse(
    messy_fhir: Made, messy_fhir_read: FhirOutput
) -> None:
    faults = messy_fhir.summary.total_faults()
    assert len(messy_fhir_read.bad_lines) == faults["truncated_line"] > 0
    iso = re.compile(r"^\d{4}-\d{2}-\d{2}")
    fields = [
        "onsetDateTime",
        "effectiveDateTime",
        "performedDateTime",
        "authoredOn",
        "occurrenceDateTime",
        "created",
    ]
    unparseable = 0
    for resources in messy_fhir_read.resources.values():
        for r in resources:
            for f in fields:
                if f in r and not (iso.match(r[f]) and _real_date(r[f][:10])):
                    unparseable += 1
    # A truncated line may have swallowed some of the unparseable dates.
    assert 0.8 * faults["unparseable_date"] <= unparseable <= faults["unparseable_date"]


def _real_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def test_zero_mess_rate_means_no_faults(clean_columnar: Made) -> None:
    assert clean_columnar.summary.total_faults() == {}
    events = read_columnar(clean_columnar.root)["clinical_events"]
    assert events["patient_id"].null_count == 0
    assert pc.min(events["effective_date"]).as_py() > date(1900, 1, 1)
