"""Check the gpdpr transparency log yourself: one file, Python 3.11 or later and the
`cryptography` package, nothing of gpdpr's. The portal serves this file at /log/verify.py and
shows its SHA-256, so you can check that you run what it published.

    python3 -m pip install cryptography
    python3 verify.py --url https://PORTAL/log/files      (or --dir FOLDER with the three files)

It downloads entries.jsonl, checkpoint.json and log.pub; checks that the entries are numbered
0, 1, 2, ... in order; hashes each line into a Merkle tree (RFC 9162: a leaf is SHA-256 of 0x00
and the line, a node SHA-256 of 0x01 and its two children); and checks that the first SIZE
entries hash to the ROOT the checkpoint states, and that the checkpoint is signed by the log's
Ed25519 key. Exit status 0: the log verifies; 1: it does not (the reason is printed); 2: the
files could not be read.

Deliberately standalone: it imports only the standard library and `cryptography`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import urllib.request
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FILES = ("entries.jsonl", "checkpoint.json", "log.pub")
LOG_NAME = "gpdpr transparency log"


class NotVerified(Exception):
    """The log does not verify: the message says where and why."""


def leaf(line: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + line).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: list[bytes]) -> bytes:
    """The RFC 9162 tree head of `leaves`: the left subtree holds the largest power of two
    strictly below their number."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node(root(leaves[:split]), root(leaves[split:]))


def canonical(value: object) -> bytes:
    """The byte form the log signs: keys sorted, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify(entries: bytes, checkpoint: bytes, public_pem: bytes) -> tuple[int, str]:
    """(entries, the checkpoint's time) if the log verifies; NotVerified saying why if not."""
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        raise NotVerified("log.pub is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise NotVerified("log.pub is not an Ed25519 public key")
    try:
        signed = json.loads(checkpoint)
        body = {k: signed[k] for k in ("log", "key", "size", "root", "time")}
        signature = base64.b64decode(signed["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise NotVerified("checkpoint.json is not a gpdpr log checkpoint") from None
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if body["log"] != LOG_NAME or body["key"] != hashlib.sha256(raw).hexdigest():
        raise NotVerified("checkpoint.json was not signed by this log's key (log.pub)")
    try:
        key.verify(signature, canonical(body))
    except InvalidSignature:
        raise NotVerified("checkpoint.json's signature does not match its contents") from None
    lines = entries.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    leaves = []
    for seq, line in enumerate(lines):
        try:
            found = json.loads(line).get("seq")
        except (ValueError, AttributeError):
            raise NotVerified(f"entries.jsonl: line {seq + 1} is not a JSON entry") from None
        if found != seq:
            raise NotVerified(f"entries.jsonl: line {seq + 1} should be entry {seq}, is {found}")
        leaves.append(leaf(line))
    size = body["size"]
    if not isinstance(size, int) or not 0 <= size <= len(leaves):
        raise NotVerified(f"the checkpoint signs {size} entries; the file has {len(leaves)}")
    if root(leaves[:size]).hex() != body["root"]:
        raise NotVerified(
            f"the first {size} entries do not hash to the signed root: an entry was changed, "
            "removed, added or reordered after it was signed"
        )
    return len(leaves), str(body["time"])


def fetch(url: str | None, folder: Path | None) -> list[bytes]:
    if folder is not None:
        return [(folder / name).read_bytes() for name in FILES]
    assert url is not None
    out = []
    for name in FILES:
        with urllib.request.urlopen(f"{url.rstrip('/')}/{name}", timeout=60) as answer:
            out.append(answer.read())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the gpdpr transparency log yourself.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="where the log's public files are served (…/log/files)")
    where.add_argument("--dir", type=Path, help="a folder holding the three files")
    given = parser.parse_args(argv)
    try:
        entries, checkpoint, public = fetch(given.url, given.dir)
    except OSError as error:
        print(f"could not read the log's files: {error}", file=sys.stderr)
        return 2
    try:
        count, when = verify(entries, checkpoint, public)
    except NotVerified as problem:
        print(f"the log does NOT verify: {problem}", file=sys.stderr)
        return 1
    print(f"the log verifies: {count} entries, signed checkpoint of {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
