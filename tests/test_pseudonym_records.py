"""Record ids leave the practice as HMAC-SHA256 of "ODS:table:id" under the practice's record key:
the same code in every extract, so a correction or a deletion finds the row it replaces. The fast
spelling in Pseudonymiser.records must give exactly what the standard library's HMAC gives."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from enum import IntEnum

from gpdpr.practice.pseudonyms import PSEUDONYM_BYTES, Pseudonymiser, record_key_input


def _stand_in(inputs: Sequence[bytes]) -> list[bytes]:
    """The custodian's function stood in for by a hash: these tests are about the keyed codes."""
    return [hashlib.sha512(b"stand-in " + i).digest() for i in inputs]


class _Kind(IntEnum):
    FIRST = 7


def test_record_codes_are_hmac_sha256_of_practice_table_and_id() -> None:
    ids: list[object] = [
        0,
        7,
        -12,
        2**63 - 1,
        10**30,
        True,  # formats as "True", not "1": it must not be taken for an integer
        _Kind.FIRST,  # formats as "7" from Python 3.11 on, whatever its str says
        "Observation/abc-1",
        "é",
        "",
        1.5,
        None,
    ]
    names = Pseudonymiser(_stand_in, "Z10001").records("clinical_events", ids)
    key = _stand_in([record_key_input("Z10001")])[0][:PSEUDONYM_BYTES]
    expected = [
        hmac.new(key, f"Z10001:clinical_events:{i}".encode(), hashlib.sha256).hexdigest()
        for i in ids
    ]
    assert names == expected


def test_the_same_id_in_another_table_or_practice_has_another_code() -> None:
    here = Pseudonymiser(_stand_in, "Z10001")
    there = Pseudonymiser(_stand_in, "Z10002")
    codes = {
        here.records("clinical_events", [5])[0],
        here.records("medications", [5])[0],
        there.records("clinical_events", [5])[0],
    }
    assert len(codes) == 3
