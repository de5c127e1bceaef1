"""Keyed pseudonyms: HMAC-SHA256 under keys derived from the collection key.

Each kind of identifier has its own key, derived with HKDF, so a patient's pseudonym can never
equal a postcode's or a staff member's even if their inputs happened to coincide, and so that one
kind can later be re-keyed without touching the others. Pseudonyms are computed once per person
(or member of staff, or postcode) and then spread over their records by position, so the cost is
per patient, not per record.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gpdpr.identifiers import is_valid_nhs_number
from gpdpr.practice.kit import CollectionKey

# The version is part of the derivation: changing how pseudonyms are made changes every one.
_INFO = {
    "patient": b"gpdpr pseudonym v1: patient",
    "staff": b"gpdpr pseudonym v1: staff",
    "postcode": b"gpdpr pseudonym v1: postcode",
}


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


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
        return hmac.new(self._keys[kind], text.encode(), sha256).hexdigest()

    def patient(self, nhs_number: str | None, local_ref: object) -> tuple[str, bool]:
        """(pseudonym, linkable). From the NHS number when it is a valid one, so the person's
        records join across practices; otherwise from the practice's own patient number, which
        keeps them apart from everyone else's."""
        if nhs_number is not None:
            digits = "".join(nhs_number.split())
            if is_valid_nhs_number(digits):
                return self._mac("patient", f"nhs:{digits}"), True
        return self._mac("patient", f"local:{self.ods}:{local_ref}"), False

    def staff(self, sds_user_id: str | None, local_ref: object) -> str:
        if sds_user_id:
            return self._mac("staff", f"sds:{sds_user_id.strip()}")
        return self._mac("staff", f"local:{self.ods}:{local_ref}")

    def postcode(self, postcode: str) -> str:
        return self._mac("postcode", normalise_postcode(postcode))
