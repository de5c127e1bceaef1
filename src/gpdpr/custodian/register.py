"""The practice register: which Ed25519 key speaks for which practice, and when.

One signed record in the custodian's key folder (register.json, signed by the service's key in
register.sig): for each key ever issued, the practice's ODS code, the key's id and public bytes,
when it was issued, when a newer key replaced it (rotated) and when it was revoked (lost or
stolen). The collector trusts a package's signer only as this record says, at the package's
extract time; an edited register fails its signature and is refused whole.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr import durable
from gpdpr.errors import UserError
from gpdpr.practice.kit import key_id, read_private_key, read_public_key

REGISTER = "register.json"
REGISTER_SIG = "register.sig"


@dataclass(frozen=True)
class Registration:
    ods_code: str
    key_id: str
    public_key: str  # raw Ed25519 public key, base64
    issued: str  # ISO times, UTC
    rotated: str | None = None
    revoked: str | None = None

    def speaks_for(self, ods: str, at: datetime) -> str | None:
        """None if this key may sign for `ods` at `at`; otherwise why not."""
        if self.ods_code != ods:
            return f"the key is registered to {self.ods_code}, not {ods}"
        if self.revoked is not None:
            return f"the key was revoked at {self.revoked}"
        if at < _time(self.issued):
            return f"the key was issued at {self.issued}, after the extract"
        if self.rotated is not None and at >= _time(self.rotated):
            return f"the key was replaced at {self.rotated}, before the extract"
        return None


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_register(keys: Path) -> list[Registration]:
    """The register, its signature checked against the service's public key."""
    path = keys / REGISTER
    if not path.exists():
        return []
    body = path.read_bytes()
    public = read_public_key(keys / "service.pub", "custodian service public key")
    try:
        signature = base64.b64decode((keys / REGISTER_SIG).read_bytes().strip(), validate=True)
        public.verify(signature, body)
        entries = [Registration(**e) for e in orjson.loads(body)["practices"]]
    except (OSError, ValueError, TypeError, KeyError, InvalidSignature, orjson.JSONDecodeError):
        raise UserError(
            f"the practice register {path} is not as the custodian signed it; no package can be "
            "trusted until the custodian restores it from the offline copy"
        ) from None
    return entries


def _write(keys: Path, entries: list[Registration], signer: Ed25519PrivateKey) -> None:
    body = orjson.dumps(
        {"kind": "gpdpr practice register", "practices": [asdict(e) for e in entries]},
        option=orjson.OPT_INDENT_2,
    )
    durable.write_file(keys / REGISTER_SIG, base64.b64encode(signer.sign(body)) + b"\n")
    durable.write_file(keys / REGISTER, body)


def register_key(keys: Path, ods: str, public: Ed25519PublicKey, at: str | None = None) -> None:
    """Record a newly issued key for `ods`; any earlier key of the practice is rotated out."""
    when = at or _now()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    entries = [
        replace(e, rotated=when) if e.ods_code == ods and e.rotated is None else e
        for e in read_register(keys)
    ]
    entries.append(Registration(ods, key_id(raw), base64.b64encode(raw).decode(), when))
    _write(keys, entries, read_private_key(keys / "service.key", "custodian service key"))


def revoke(keys: Path, ods: str, at: str | None = None) -> int:
    """Mark every key of `ods` not already revoked as revoked (a lost or stolen kit): no
    package it signed is trusted after. How many keys were revoked."""
    when = at or _now()
    entries = read_register(keys)
    changed = [
        replace(e, revoked=when) if e.ods_code == ods and e.revoked is None else e for e in entries
    ]
    count = sum(1 for a, b in zip(entries, changed, strict=True) if a != b)
    if count:
        _write(keys, changed, read_private_key(keys / "service.key", "custodian service key"))
    return count
