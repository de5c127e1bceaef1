"""One huge Bundle file at the practice boundary: it is read an entry at a time (never parsed or
held whole), its records are the same as the same resources given one to a line, and what cannot
be read is named by file and entry index."""

from __future__ import annotations

import tempfile
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extracting import Keys, run, tables
from fhir_exports import ODS, SNOMED, coded, patient, practice, records, support, write
from gpdpr.practice import fhir_stream
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.fhir import WRONG_SHAPE
from gpdpr.practice.fhir_bundle import OLDER, REPEATED, Repeats
from gpdpr.practice.rules import DUPLICATE, REASONS
from test_fhir_bundles import transaction

VARYING = {"package_id", "created_at"}  # of every package, however it was read
NOTE = "A long narrative the extractor never reads. " * 100  # ~4.5 kB an entry


def one_bundle_export(folder: Path, bundle: dict[str, Any]) -> Path:
    """An export whose records are all in one Bundle file (`everything.json`)."""
    write(folder, [])  # the manifest alone
    about = orjson.loads((folder / "export.json").read_bytes())
    about["output"] = [{"type": "Bundle", "url": "https://server.example/everything.json"}]
    (folder / "export.json").write_bytes(orjson.dumps(about))
    (folder / "everything.json").write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    return folder


@pytest.fixture
def spill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder a streamed Bundle's resources are spilled to."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch, spill: Path) -> Iterator[list[Path]]:
    """Every Bundle file is streamed, and none may be read whole: the streaming path is the only
    one that can have read it. Nothing spilled is left behind."""
    monkeypatch.setattr(fhir_stream, "STREAM_BYTES", 0)
    read_whole = Path.read_bytes
    files: list[Path] = []

    def guarded(path: Path) -> bytes:
        if path.name == "everything.json":
            raise AssertionError(f"{path} was read whole")
        return read_whole(path)

    real = fhir_stream.stream

    def spy(path: Path, *args: Any) -> fhir_stream.Streamed:
        files.append(path)
        return real(path, *args)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    monkeypatch.setattr(fhir_stream, "stream", spy)
    yield files
    assert files
    assert list(spill.iterdir()) == []


def rows(package: Path) -> dict[str, list[tuple[str, ...]]]:
    """Each table's rows, sorted, but for record ids: a transaction's created resources are
    named by a fresh urn:uuid, so their ids (and record pseudonyms) are not the lines' ids."""
    return {
        name: sorted(
            tuple(str(v) for k, v in row.items() if k != "record_id") for row in table.to_pylist()
        )
        for name, table in tables(package).items()
    }


def test_a_streamed_bundle_gives_the_records_its_resources_give_a_line_each(
    tmp_path: Path, keys: Keys, streamed: list[Path]
) -> None:
    resources = practice(30)
    plain = run(write(tmp_path / "plain" / ODS, resources), tmp_path / "plain-out", keys)
    bundle = transaction(resources)  # every reference between entries is a urn:uuid
    folder = one_bundle_export(tmp_path / "bundle" / ODS, bundle)
    manifest = run(folder, tmp_path / "package", keys)

    assert streamed == [folder / "everything.json"]
    assert manifest["quarantined"]["rows"] == plain["quarantined"]["rows"] == 0
    assert rows(tmp_path / "package") == rows(tmp_path / "plain-out")
    sent = {name: len(r) for name, r in rows(tmp_path / "package").items()}
    assert [name for name, n in sent.items() if n == 0] == ["deletions"]  # a full extract's


def test_a_streamed_bundle_names_what_it_cannot_read_by_file_and_entry_index(
    tmp_path: Path, keys: Keys, streamed: list[Path]
) -> None:
    bundle = transaction(practice(3))
    bad = next(i for i, e in enumerate(bundle["entry"]) if "Condition" in e["request"]["url"])
    bundle["entry"][bad]["resource"]["subject"] = "Patient/p1"  # a reference as a string
    folder = one_bundle_export(tmp_path / "export" / ODS, bundle)
    manifest = run(folder, tmp_path / "package", keys)

    held = [
        orjson.loads(x) for x in quarantine_path(tmp_path / "package").read_bytes().splitlines()
    ]
    assert [(q["source"], q["position"], q["path"], q["resource_type"]) for q in held] == [
        ("everything.json", bad, f"Bundle.entry[{bad}].resource.subject", "Condition")
    ]
    assert manifest["tables"]["patients"]["rows"] == 3


def test_a_streamed_bundle_of_the_wrong_shape_is_quarantined_whole(
    tmp_path: Path, keys: Keys, streamed: list[Path]
) -> None:
    bundle = transaction(practice(3))
    bundle["entry"].insert(7, ["not", "an", "entry"])
    one_bundle_export(tmp_path / "a" / ODS, bundle)
    write(tmp_path / "a" / ODS, practice(1))  # the practice's own files, read as usual
    bundle["entry"][7] = {"resource": {"resourceType": "Condition"}}
    text = orjson.dumps(bundle)
    cut = one_bundle_export(tmp_path / "b" / ODS, {})
    (cut / "everything.json").write_bytes(text[: len(text) // 2])  # cut short mid-entry
    write(cut, practice(1))

    for name in ("a", "b"):
        folder = tmp_path / name / ODS
        about = orjson.loads((folder / "export.json").read_bytes())
        about["output"].append({"type": "Bundle", "url": "https://s.example/everything.json"})
        (folder / "export.json").write_bytes(orjson.dumps(about))
        manifest = run(folder, tmp_path / f"{name}-out", keys)
        lines = quarantine_path(tmp_path / f"{name}-out").read_bytes().splitlines()
        held = [orjson.loads(x) for x in lines]
        assert [(q["source"], q["position"]) for q in held] == [("everything.json", 1)], name
        assert manifest["tables"]["patients"]["rows"] == 1, name  # nothing of the Bundle is read
    assert held[0]["reason"].startswith("not valid JSON")
    shape = orjson.loads(quarantine_path(tmp_path / "a-out").read_bytes())
    assert (shape["path"], shape["resource_type"]) == ("Bundle.entry[7]", "Bundle")


def _bundle(entries: int, note: str) -> bytes:
    def observation(n: int) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": str(uuid.UUID(int=n)),
            "status": "final",
            "subject": {"reference": f"urn:uuid:{uuid.UUID(int=0)}"},
            "note": [{"text": note}],
        }

    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": f"urn:uuid:{uuid.UUID(int=n)}", "resource": observation(n)}
                for n in range(1, entries + 1)
            ],
        }
    )


def _peak(tmp_path: Path, name: str, content: bytes) -> int:
    """The most memory (bytes, as Python allocates it) streaming the Bundle `content` took."""
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    (tmp_path / name).mkdir()
    tracemalloc.start()
    try:
        done = fhir_stream.stream(path, tmp_path / name, Repeats(), "repeated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.counts == {"Observation": 2_000}
    return peak


def test_memory_streaming_a_bundle_takes_does_not_grow_with_its_content(tmp_path: Path) -> None:
    small = _bundle(2_000, "short")
    large = _bundle(2_000, NOTE)
    assert len(large) > 10 * len(small)
    small_peak = _peak(tmp_path, "small", small)
    large_peak = _peak(tmp_path, "large", large)
    # The entries' names are held (for the references between them); their content is not.
    assert large_peak < 2 * small_peak
    assert large_peak < len(large) / 5


def test_streamed_history_and_searchset_pages_read_as_small_ones_are(
    tmp_path: Path, keys: Keys, streamed: list[Path]
) -> None:
    resources = practice(2)
    mine = {r["id"]: r for r in resources}
    newer = {**mine["p1-c"], "code": coded(SNOMED[6])}
    history = [  # newest first, as a server writes a history
        {"resource": newer, "request": {"method": "PUT", "url": "Condition/p1-c"}},
        {"resource": mine["p1-c"], "request": {"method": "POST", "url": "Condition"}},
    ]

    def page(match: str) -> dict[str, Any]:  # each page includes the patient again
        entries = [
            {"resource": mine[match], "search": {"mode": "match"}},
            {"resource": mine["p2"], "search": {"mode": "include"}},
        ]
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}

    bundled = {"p1-c", "p2", "p2-c", "p2-o"}
    folder = write(tmp_path / "export" / ODS, [r for r in resources if r["id"] not in bundled])
    for name, bundle in (
        ("history", {"resourceType": "Bundle", "type": "history", "entry": history}),
        ("page1", page("p2-c")),
        ("page2", page("p2-o")),
    ):
        (folder / f"{name}.json").write_bytes(orjson.dumps(bundle))
    manifest = run(folder, tmp_path / "package", keys)

    assert len(streamed) == 3
    assert manifest["quarantined"]["rows"] == 0
    assert manifest["tables"]["patients"]["rows"] == 2
    assert manifest["not_read"][REPEATED] == manifest["not_read"][OLDER] == 1
    codes = tables(tmp_path / "package")["clinical_events"]["code"].to_pylist()
    assert SNOMED[6] in codes and codes.count(SNOMED[0]) == 1  # p2's; p1's is the newer version


def _repeating_export(folder: Path) -> Path:
    """An export whose Bundles repeat resources every way they come: the same id twice in one
    Bundle (with other content), a resource of an NDJSON file given again in a Bundle, one given
    in two Bundle files, a searchset's include of a patient already read, and an entry out of
    shape; some Bundles a line of `Bundle.ndjson`, others a file each."""
    people = {f"p{i}": [patient(f"p{i}", i), *records(f"p{i}")] for i in range(1, 6)}
    write(folder, [*support(), *people["p1"]])

    def collection(bid: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
        entries = [{"resource": r} for r in resources]
        return {"resourceType": "Bundle", "id": bid, "type": "collection", "entry": entries}

    again = {**people["p2"][2], "code": coded(SNOMED[5])}  # p2-c again, another code
    damaged = {**people["p3"][3], "id": "p3-bad", "subject": "Patient/p3"}
    a = transaction([*people["p2"], again])
    b = collection("b", [*people["p3"], damaged, people["p1"][2]])  # p1-c is in Condition.ndjson
    c = {
        "resourceType": "Bundle",
        "id": "c",
        "type": "searchset",
        "entry": [
            {"resource": people["p4"][2], "search": {"mode": "match"}},
            {"resource": people["p2"][0], "search": {"mode": "include"}},  # read already, in a
            {"resource": people["p4"][0], "search": {"mode": "include"}},
            {"resource": people["p4"][0], "search": {"mode": "include"}},  # twice on one page
        ],
    }
    # p4's Condition was in c; p3's Observation is in b as well
    d = collection("d", [people["p4"][1], *people["p4"][3:], people["p3"][3]])
    lines = [collection("l1", people["p5"]), collection("l2", [people["p5"][2]])]
    (folder / "Bundle.ndjson").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    for name, bundle in (("a", a), ("b", b), ("c", c), ("d", d)):
        (folder / f"{name}.json").write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))
    return folder


def test_a_bundle_streamed_or_parsed_whole_gives_the_same_package(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, spill: Path
) -> None:
    folder = _repeating_export(tmp_path / "export" / ODS)
    made = {}
    for how, threshold in (("whole", 1 << 40), ("streamed", 0)):
        monkeypatch.setattr(fhir_stream, "STREAM_BYTES", threshold)
        out = tmp_path / how
        manifest = run(folder, out, keys)
        held = quarantine_path(out).read_bytes().splitlines()
        made[how] = (
            {name: t.to_pylist() for name, t in tables(out).items()},
            {k: v for k, v in manifest.items() if k not in VARYING},
            [orjson.loads(x) for x in held],
        )
        assert list(spill.iterdir()) == []
    whole, streamed = made["whole"], made["streamed"]
    assert whole[0] == streamed[0]
    assert whole[1] == streamed[1]
    assert whole[2] == streamed[2]
    # What the repeats came to, both ways: each resource read once, the others accounted for.
    by_reason = whole[1]["quarantined"]["by_reason"]
    assert by_reason == {REASONS[DUPLICATE]: 4, WRONG_SHAPE: 1}
    assert whole[1]["not_read"][REPEATED] == 2
    assert {q["source"] for q in whole[2]} == {"a.json", "b.json", "d.json", "Bundle.ndjson"}
    assert len(whole[0]["patients"]) == 5
