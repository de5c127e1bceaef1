"""Finding a large Bundle's entries by their bytes (fhir_split) gives exactly the entries a JSON
parser gives, whatever the entries hold (brackets and escaped quotes inside strings, entries that
are not objects), however the file is laid out, and wherever a chunk ends; what is not JSON is
refused, never half read."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.practice import fhir_split
from gpdpr.practice.fhir_read import Shape

# Text full of what JSON gives structure with, escaped every way.
TRICKY = st.text(alphabet=st.sampled_from(list('{}[]",:\\ a\n\u00e9')), max_size=12)
LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | TRICKY
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=8,
)
ENTRY = st.dictionaries(TRICKY, VALUES, max_size=4) | st.lists(VALUES, max_size=2) | LEAVES


def _read(text: bytes, chunk: int, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(fhir_split, "CHUNK", chunk)
    found = fhir_split.entries(io.BytesIO(text))
    assert found is not None
    return [value for _, value in found]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    entries=st.lists(ENTRY, max_size=6),
    before=st.dictionaries(TRICKY.filter(lambda k: k != "entry"), VALUES, max_size=2),
    after=st.dictionaries(TRICKY.filter(lambda k: k != "entry"), VALUES, max_size=2),
    indent=st.sampled_from([None, 1, 2]),
    chunk=st.integers(1, 64),
)
def test_the_entries_found_by_their_bytes_are_the_parsers(
    entries: list[Any],
    before: dict[str, Any],
    after: dict[str, Any],
    indent: int | None,
    chunk: int,
) -> None:
    bundle = {"resourceType": "Bundle", **before, "entry": entries, **after}
    text = json.dumps(bundle, indent=indent).encode()
    with pytest.MonkeyPatch.context() as patch:
        assert _read(text, chunk, patch) == entries


@pytest.mark.parametrize(
    "text",
    [
        b'{"entry":[{"a":1}',  # cut short after an entry
        b'{"entry":[{"a":"}',  # cut short inside a string
        b'{"entry":[{"a":1} {"a":2}]}',  # no comma between entries
        b'{"entry":[,{"a":1}]}',  # a comma before the first
        b'{"entry":[{"a":1},]}',  # and after the last
        b'{"entry":[{"a":1},{"a":tru}]}',  # an entry that is not JSON
        b'{"entry":[{"a":1}], "type": }',  # what follows the array is not JSON
        b'{"entry":[{"a":1}],"x":1',  # the Bundle is not closed
    ],
)
def test_what_is_not_json_is_refused(text: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fhir_split.NotJson):
        _read(text, 8, monkeypatch)


def test_a_second_entry_array_is_out_of_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Shape):
        _read(b'{"entry":[{"a":1}],"entry":[{"b":2}]}', 8, monkeypatch)


def test_an_entry_key_inside_a_string_or_a_nested_object_is_not_the_array() -> None:
    text = orjson.dumps(
        {"id": 'x "entry":[', "meta": {"entry": [{"no": 1}]}, "entry": [{"yes": 1}]}
    )
    found = fhir_split.entries(io.BytesIO(text))
    assert found is not None
    assert [v for _, v in found] == [{"yes": 1}]


def test_a_file_whose_array_starts_late_is_left_to_the_incremental_parser() -> None:
    text = orjson.dumps({"meta": "x" * (fhir_split.HEAD + 1), "entry": [{"a": 1}]})
    assert fhir_split.entries(io.BytesIO(text)) is None


# Entries as Bundles hold them, with strings and nested objects that look like an entry's end.
LOOKALIKE = st.sampled_from(['},{"resource":', '}, {"fullUrl":"', "}]}", '\\"},{"request"', "x"])
ENTRY_LIKE = st.fixed_dictionaries(
    {"resource": st.dictionaries(TRICKY | LOOKALIKE, VALUES | LOOKALIKE, max_size=3)},
    optional={"fullUrl": LOOKALIKE | TRICKY, "search": st.just({"mode": "match"})},
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    entries=st.lists(ENTRY_LIKE, max_size=8),
    indent=st.sampled_from([None, 1, 2]),
    chunk=st.integers(1, 96),
)
def test_entries_taken_a_chunk_at_a_time_by_a_guessed_end_are_the_parsers(
    entries: list[Any], indent: int | None, chunk: int
) -> None:
    text = json.dumps({"resourceType": "Bundle", "entry": entries}, indent=indent).encode()
    with pytest.MonkeyPatch.context() as patch:
        assert _read(text, chunk, patch) == entries


def test_a_large_bundle_is_taken_by_guessed_ends_and_not_byte_by_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = [
        {"fullUrl": f"urn:uuid:{i}", "resource": {"id": str(i), "a": '},{"resource":'}}
        for i in range(2000)
    ]
    text = orjson.dumps({"resourceType": "Bundle", "entry": entries})
    exact: list[int] = []

    def counted(buf: bytes) -> Any:
        exact.append(len(buf))
        return _real(buf)

    monkeypatch.setattr(fhir_split, "_structure", counted)
    assert _read(text, 4096, monkeypatch) == entries
    # Only the last bytes, after the last guessed end, are found by every structural byte.
    assert sum(exact) < 4096 * 3


_real = fhir_split._structure
