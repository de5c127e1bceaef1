"""The practice's side of the custodian's pseudonym service: one signed request per extract.

The practice blinds every input it needs a pseudonym for (RFC 9497, gpdpr.practice.oprf), sends
the blinded elements in one POST signed with its own key, checks that the answer is signed by the
custodian (the key in its kit) and bound to this very request, then unblinds. The custodian sees
only random-looking group elements; the practice never holds the key.

The wire format, shared with gpdpr.custodian.service:

    POST /v1/evaluate            body: the blinded elements, 32 bytes each, back to back
      Gpdpr-Practice: Z10001     who asks
      Gpdpr-Time: 2026-12-06T13:00:00Z
      Gpdpr-Nonce: 32 hex digits, never used twice
      Gpdpr-Signature: base64 Ed25519 over `request_message(...)`, by the practice's key
    200                          body: the evaluated elements, in the same order
      Gpdpr-Signature: base64 Ed25519 over `response_message(...)`, by the custodian's key
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from cryptography.exceptions import InvalidSignature

from gpdpr.errors import UserError
from gpdpr.practice import oprf
from gpdpr.practice.kit import PracticeKit

EVALUATE_PATH = "/v1/evaluate"
TIMEOUT_SECONDS = 300.0  # a national extract night: the service may be busy, never silent


def request_message(practice: str, time: str, nonce: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"gpdpr custodian request v1\n{practice}\n{time}\n{nonce}\n{path}\n{digest}".encode()


def response_message(request_signature: str, body: bytes) -> bytes:
    """What the custodian signs: its answer, bound to the request it answers (by that request's
    signature), so an answer cannot be replayed to another request."""
    digest = hashlib.sha256(body).hexdigest()
    return f"gpdpr custodian response v1\n{request_signature}\n{digest}".encode()


def evaluate(kit: PracticeKit, inputs: Sequence[bytes], url: str | None = None) -> list[bytes]:
    """The OPRF output for each input, in one round trip to the custodian's service."""
    if not inputs:
        return []
    blinds = oprf.new_blinds(len(inputs))
    body = b"".join(oprf.blind(inputs, blinds))
    base = (url or kit.custodian_url).rstrip("/")
    time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    nonce = secrets.token_hex(16)
    signature = base64.b64encode(
        kit.signing.sign(request_message(kit.ods_code, time, nonce, EVALUATE_PATH, body))
    ).decode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Gpdpr-Practice": kit.ods_code,
        "Gpdpr-Time": time,
        "Gpdpr-Nonce": nonce,
        "Gpdpr-Signature": signature,
    }
    try:
        response = httpx.post(
            base + EVALUATE_PATH, content=body, headers=headers, timeout=TIMEOUT_SECONDS
        )
    except httpx.HTTPError as exc:
        raise UserError(
            f"cannot reach the custodian's pseudonym service at {base} ({exc}): it must be "
            "running (`gpdpr custodian serve`) and reachable from here; nothing was extracted"
        ) from None
    if response.status_code != 200:
        raise UserError(
            f"the custodian's pseudonym service at {base} refused {kit.ods_code}'s request "
            f"(HTTP {response.status_code}): {response.text.strip()[:300]}"
        )
    answer = response.content
    try:
        kit.custodian.verify(
            base64.b64decode(response.headers.get("Gpdpr-Signature", ""), validate=True),
            response_message(signature, answer),
        )
    except (InvalidSignature, ValueError):
        raise UserError(
            f"the answer from {base} is not signed by the custodian named in the kit "
            f"{kit.folder}: it is not the custodian's service, or the kit is out of date. "
            "Nothing was extracted"
        ) from None
    if len(answer) != len(body):
        raise UserError(f"the custodian's service at {base} gave a malformed answer")
    evaluated = [answer[i : i + oprf.ELEMENT_BYTES] for i in range(0, len(answer), 32)]
    try:
        return oprf.finalize(inputs, blinds, evaluated)
    except oprf.OprfError:
        raise UserError(f"the custodian's service at {base} gave a malformed answer") from None
