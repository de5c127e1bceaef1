"""Pseudonyms made with the custodian's oblivious function, so no key that makes one is ever at
the practice.

Every identifier that must join across practices (a patient's NHS number, a member of staff's SDS
id, a postcode) and every one that must not (a patient without a valid NHS number, by the
practice's own number) becomes an input to the custodian's OPRF (gpdpr.practice.oprf), with its
kind and version in the input so that kinds never collide. A pseudonym is the first 32 bytes of the
OPRF output, in hex. Record ids, which never leave the practice's own space, are keyed with
HMAC-SHA256 under a practice record key that is itself an OPRF output (so it is the same in every
extract, yet never stored).

All the inputs of an extract are evaluated in one round trip (`prepare`), each distinct input
once; after that every look-up is local. Anything not prepared is evaluated on demand, in one more
round trip per call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from gpdpr.identifiers import valid_nhs_numbers

# The version is part of every input: changing how pseudonyms are made changes every one.
VERSION = "gpdpr pseudonym v2"
METHOD = "RFC 9497 OPRF (ristretto255-SHA512) at the custodian's service; record ids HMAC-SHA256"
PSEUDONYM_BYTES = 32
_SHA256_BLOCK = 64

Evaluate = Callable[[Sequence[bytes]], list[bytes]]


def nhs_input(nhs_number: str) -> bytes:
    """The OPRF input for a valid NHS number (ten digits, no spaces): the same at every
    practice, so a person's records join. The custodian evaluates it directly for an opt-out."""
    return f"{VERSION}: patient nhs:{nhs_number}".encode()


def local_patient_input(ods: str, ref: object) -> bytes:
    return f"{VERSION}: patient local:{ods}:{ref}".encode()


def staff_input(ods: str, sds_user_id: str | None, local_ref: object) -> bytes:
    if sds_user_id:
        return f"{VERSION}: staff sds:{sds_user_id.strip()}".encode()
    return f"{VERSION}: staff local:{ods}:{local_ref}".encode()


def postcode_input(postcode: str) -> bytes:
    return f"{VERSION}: postcode {normalise_postcode(postcode)}".encode()


def record_key_input(ods: str) -> bytes:
    return f"{VERSION}: record key {ods}".encode()


def as_pseudonym(output: bytes) -> str:
    return output[:PSEUDONYM_BYTES].hex()


def normalise_postcode(postcode: str) -> str:
    """'wa23 1fl' and 'WA231FL' are the same postcode: upper case, one space before the last
    three characters."""
    compact = "".join(postcode.split()).upper()
    return f"{compact[:-3]} {compact[-3:]}" if len(compact) > 3 else compact


class Pseudonymiser:
    def __init__(self, evaluate: Evaluate, ods_code: str) -> None:
        self.ods = ods_code
        self._evaluate = evaluate
        self._made: dict[bytes, bytes] = {}
        self.evaluations = 0  # how many inputs went to the custodian (for the manifest)

    def prepare(self, inputs: Iterable[bytes]) -> None:
        """Evaluate every input not yet known, in one round trip."""
        wanted = [i for i in dict.fromkeys(inputs) if i not in self._made]
        if not wanted:
            return
        outputs = self._evaluate(wanted)
        self.evaluations += len(wanted)
        self._made.update(zip(wanted, outputs, strict=True))

    def _outputs(self, inputs: list[bytes]) -> list[bytes]:
        self.prepare(inputs)
        made = self._made
        return [made[i] for i in inputs]

    def patient_inputs(
        self, nhs_numbers: pa.Array | pa.ChunkedArray, local_refs: Sequence[object]
    ) -> tuple[list[bytes], npt.NDArray[np.bool_]]:
        compact, valid = valid_nhs_numbers(nhs_numbers)
        ods = self.ods
        inputs = [
            nhs_input(nhs) if ok else local_patient_input(ods, ref)
            for nhs, ok, ref in zip(compact.to_pylist(), valid.tolist(), local_refs, strict=True)
        ]
        return inputs, valid

    def patients(
        self, nhs_numbers: pa.Array | pa.ChunkedArray, local_refs: list[object]
    ) -> tuple[list[str], npt.NDArray[np.bool_]]:
        """(pseudonyms, linkable) for a practice's patients. From the NHS number when it is a
        valid one, so a person's records join across practices; otherwise from the practice's
        own patient number, which keeps them apart from everyone else's."""
        inputs, valid = self.patient_inputs(nhs_numbers, local_refs)
        return [as_pseudonym(o) for o in self._outputs(inputs)], valid

    def staff(self, sds_user_id: str | None, local_ref: object) -> str:
        return as_pseudonym(self._outputs([staff_input(self.ods, sds_user_id, local_ref)])[0])

    def record_key(self) -> bytes:
        return self._outputs([record_key_input(self.ods)])[0][:PSEUDONYM_BYTES]

    def records(self, table: str, local_ids: list[object]) -> list[str]:
        """Keyed codes for the practice system's record ids: the same id gives the same code in
        every extract (so a correction or a deletion finds the row it replaces), and an id made
        of a name or an NHS number leaves as nothing anyone can read."""
        # HMAC-SHA256 (RFC 2104) of "ODS:table:id", spelled out on hashlib's objects: the keyed
        # inner state (with the prefix every id shares) and the outer state are made once and
        # copied for each id. A million ids a practice: hmac.HMAC's Python wrapper around the
        # same steps cost a third more, and hmac.digest, which keys afresh each time, twice.
        key = self.record_key().ljust(_SHA256_BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        inner.update(f"{self.ods}:{table}:".encode())
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        start, finish = inner.copy, outer.copy
        out = []
        for i in local_ids:
            digest = start()
            # A supplier's integer id is the common case; b"%d" is its f-string spelling, faster.
            digest.update(b"%d" % i if type(i) is int else f"{i}".encode())
            mac = finish()
            mac.update(digest.digest())
            out.append(mac.hexdigest())
        return out

    def postcodes(self, postcodes: list[str | None]) -> list[str | None]:
        """Keyed codes for postcodes, each distinct postcode computed once."""
        distinct = [p for p in dict.fromkeys(postcodes) if p is not None]
        made = dict(
            zip(distinct, self._outputs([postcode_input(p) for p in distinct]), strict=True)
        )
        return [None if p is None else as_pseudonym(made[p]) for p in postcodes]
