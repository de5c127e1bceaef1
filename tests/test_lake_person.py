"""Each patient's number in the lake (lake.tables.PERSON): the first 16 bytes of their
pseudonym, made from the pseudonym's text however Arrow holds it, and never from anything that
is not a pseudonym's shape."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.lake.tables import person_numbers

pseudonyms = st.binary(min_size=4, max_size=4).map(lambda b: hashlib.sha256(b).hexdigest())


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), pseudonyms), max_size=30),
    start=st.integers(0, 5),
    encoded=st.booleans(),
)
def test_a_number_is_the_pseudonyms_first_16_bytes(
    values: list[str | None], start: int, encoded: bool
) -> None:
    """Nulls stay null, and a slice or a dictionary gives each row its own number."""
    array = pa.array(values, pa.string())
    if encoded:
        array = array.dictionary_encode()
    array = array.slice(min(start, len(values)))
    numbers = person_numbers(array)
    held = values[min(start, len(values)) :]
    assert numbers.type == pa.uuid()
    expected = [None if v is None else bytes.fromhex(v[:32]) for v in held]
    assert numbers.storage.to_pylist() == expected


@pytest.mark.parametrize(
    "value", ["A" * 64, "g" * 64, " " * 64, "0" * 31, "é" * 32, "0x" + "0" * 62, "/" * 64]
)
def test_what_is_not_a_pseudonym_gets_no_number(value: str) -> None:
    """Upper case, letters past f, spaces, too short, non-ASCII: refused, never numbered."""
    with pytest.raises(ValueError, match="pseudonym"):
        person_numbers(pa.array(["0" * 64, value]))
