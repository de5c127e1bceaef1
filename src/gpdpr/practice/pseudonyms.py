"""Keyed pseudonyms: HMAC-SHA256 under keys derived from the collection key.

Each kind of identifier has its own key, derived with HKDF, so a patient's pseudonym can never
equal a postcode's or a staff member's even if their inputs happened to coincide, and so that one
kind can later be re-keyed without touching the others. Pseudonyms are computed once per person
(or member of staff, or postcode) and then spread over their records by position, so the cost is
per patient, not per record.
"""

from __future__ import annotations

import hmac

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gpdpr.identifiers import valid_nhs_numbers
from gpdpr.practice.kit import CollectionKey

# The version is part of the derivation: changing how pseudonyms are made changes every one.
_INFO = {
    "patient": b"gpdpr pseudonym v1: patient",
    "staff": b"gpdpr pseudonym v1: staff",
    "postcode": b"gpdpr pseudonym v1: postcode",
    "record": b"gpdpr pseudonym v1: record",
}


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def patient_key(collection: CollectionKey) -> bytes:
    """The key every patient pseudonym is made with. The custodian derives the same one to find
    a person's pseudonym from their NHS number (for an opt-out, or a re-identification)."""
    return _derive(collection.key, _INFO["patient"])


def nhs_pseudonym(key: bytes, nhs_number: str) -> str:
    """A patient's pseudonym from a valid NHS number (ten digits, no spaces) under
    `patient_key`: the same at every practice, so a person's records join."""
    return hmac.digest(key, f"nhs:{nhs_number}".encode(), "sha256").hex()


def normalise_postcode(postcode: str) -> str:
    """'wa23 1fl' and 'WA231FL' are the same postcode: upper case, one space before the last
    three characters."""
    compact = "".join(postcode.split()).upper()
    return f"{compact[:-3]} {compact[-3:]}" if len(compact) > 3 else compact


class Pseudonymiser:
    def __init__(self, collection: CollectionKey, ods_code: str) -> None:
        self.ods = ods_code
        self._keys = {kind: _derive(collection.key, info) for kind, info in _INFO.items()}

    def _mac(self, kind: str, text: str) -> str:
        return hmac.digest(self._keys[kind], text.encode(), "sha256").hex()

    def patients(
        self, nhs_numbers: pa.Array | pa.ChunkedArray, local_refs: list[object]
    ) -> tuple[list[str], npt.NDArray[np.bool_]]:
        """(pseudonyms, linkable) for a practice's patients. From the NHS number when it is a
        valid one, so a person's records join across practices; otherwise from the practice's
        own patient number, which keeps them apart from everyone else's."""
        compact, valid = valid_nhs_numbers(nhs_numbers)
        key, ods = self._keys["patient"], self.ods
        pseudonyms = [
            nhs_pseudonym(key, nhs)
            if ok
            else hmac.digest(key, f"local:{ods}:{ref}".encode(), "sha256").hex()
            for nhs, ok, ref in zip(compact.to_pylist(), valid.tolist(), local_refs, strict=True)
        ]
        return pseudonyms, valid

    def staff(self, sds_user_id: str | None, local_ref: object) -> str:
        if sds_user_id:
            return self._mac("staff", f"sds:{sds_user_id.strip()}")
        return self._mac("staff", f"local:{self.ods}:{local_ref}")

    def records(self, table: str, local_ids: list[object]) -> list[str]:
        """Keyed codes for the practice system's record ids: the same id gives the same code in
        every extract (so a correction or a deletion finds the row it replaces), and an id made
        of a name or an NHS number leaves as nothing anyone can read."""
        prefix = f"{self.ods}:{table}:"
        # The keyed state is made once and copied for each id: the same HMAC as `_mac`, without
        # setting up the key a million times.
        keyed = hmac.new(self._keys["record"], digestmod="sha256")
        out = []
        for i in local_ids:
            mac = keyed.copy()
            mac.update(f"{prefix}{i}".encode())
            out.append(mac.hexdigest())
        return out

    def postcodes(self, postcodes: list[str | None]) -> list[str | None]:
        """Keyed codes for postcodes, each distinct postcode computed once."""
        made: dict[str, str] = {}
        out: list[str | None] = []
        for postcode in postcodes:
            if postcode is None:
                out.append(None)
                continue
            if postcode not in made:
                made[postcode] = self._mac("postcode", normalise_postcode(postcode))
            out.append(made[postcode])
        return out
