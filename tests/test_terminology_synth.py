"""`gpdpr synth` draws codes from the loaded terminology store, so synthetic practices use the
hierarchy and the history (a kind of IVF the specification never names, a retired dissent code);
and the extractor, reading by meaning, removes the one and honours the other."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from extracting import Keys, patient_pseudonym, run
from gpdpr.synth.records import vocabularies
from gpdpr.synth.run import SynthRequest, synthesise
from readers import practice_folders, read_columnar
from terminology_release import DISSENT, IVF, IVF_CHILD, OLD_DISSENT, WITHDRAWN, use_release

INSEMINATION = "58533008"  # named in the set too; not in the test release


def rows_with(table: pa.Table, codes: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table["code"], value_set=pa.array(codes, pa.string())))


def test_synthetic_records_use_the_loaded_release_and_are_extracted_by_meaning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Keys
) -> None:
    plain, _ = vocabularies()
    assert IVF_CHILD not in plain.codes and OLD_DISSENT not in plain.codes
    use_release(tmp_path, monkeypatch)
    snomed, _ = vocabularies()
    assert IVF_CHILD in snomed.codes[snomed.of("restricted.ivf")]
    assert OLD_DISSENT in snomed.codes[snomed.of("optout.type1_dissent")]

    request = SynthRequest(
        tmp_path / "synth", 1, 3000, seed=3, format="columnar", mess_rate=0.0, workers=1
    )
    synthesise(request)
    source = read_columnar(request.out)
    events = source["clinical_events"]
    assert rows_with(events, [IVF_CHILD]).num_rows > 0

    (practice,) = practice_folders(request.out)
    manifest = run(practice, tmp_path / "package", keys)
    removed = manifest["excluded_by_table"]["clinical_events"]
    assert (
        removed["restricted_code:assisted_conception"]
        == rows_with(events, [IVF, IVF_CHILD, INSEMINATION]).num_rows
    )

    # Who dissents, by each person's latest opt-out entry, the retired code read as the dissent
    # it was: the extractor agrees, and some dissent by the retired code alone.
    latest: dict[str, tuple[object, object, bool, str]] = {}
    for e in rows_with(events, [DISSENT, OLD_DISSENT, WITHDRAWN]).to_pylist():
        order = (e["effective_date"], e["recorded_at"], e["code"] != WITHDRAWN, e["code"])
        latest[e["patient_id"]] = max(latest.get(e["patient_id"], order), order)
    nhs = dict(
        zip(
            source["patients"]["patient_id"].to_pylist(),
            source["patients"]["nhs_number"].to_pylist(),
            strict=True,
        )
    )
    dissenting = {p for p, (_, _, dissent, _) in latest.items() if dissent}
    assert {p for p in dissenting if latest[p][3] == OLD_DISSENT}
    expected = {patient_pseudonym(keys, nhs[p]) for p in dissenting}
    assert set(manifest["type1_opt_out"]["active"]) == expected
