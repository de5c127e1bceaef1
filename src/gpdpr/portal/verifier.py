"""Check the gpdpr transparency log yourself: one file, Python 3.11 or later and the
`cryptography` package, nothing of gpdpr's. The portal serves this file at /log/verify.py with
the trust policy it pins written into POLICY below, and shows its SHA-256, so you can check that
you run what it published.

    python3 -m pip install cryptography
    python3 verify.py --url https://PORTAL/log/files      (or --dir FOLDER with the files)
    python3 verify.py --dir FOLDER --policy FILE          (a policy you pinned yourself)

It downloads entries.jsonl and checkpoint (never the policy: that comes with this file); checks
that the entries are numbered 0, 1, 2, ... in order; hashes each line into a Merkle tree (RFC 9162:
a leaf is SHA-256 of 0x00 and the line, a node SHA-256 of 0x01 and its two children); checks that
the first SIZE entries hash to the ROOT the checkpoint states (c2sp.org/tlog-checkpoint), that the
checkpoint is signed by the pinned log key and co-signed, within the policy's max-age, by at least
a quorum of the pinned witnesses (c2sp.org/signed-note, c2sp.org/tlog-cosignature). Witnesses
never co-sign a tree that is not an extension of the last they co-signed, so a log rolled back,
forked or re-signed with another key fails here even if you never kept a checkpoint. Exit status
0: the log verifies; 1: it does not (the reason is printed); 2: the files could not be read.

Deliberately standalone: it imports only the standard library and `cryptography`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import struct
import sys
import time
import urllib.request
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FILES = ("entries.jsonl", "checkpoint")
POLICY = """"""  # the portal writes its pinned policy here when it serves this file


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


Key = tuple[str, bytes, int, Ed25519PublicKey]


def vkey(text: str) -> Key:
    """A verifier key name+id+base64(type||key): its name, key ID, type and key, ID checked."""
    try:
        name, hexid, data = text.strip().split("+", 2)
        raw = base64.b64decode(data, validate=True)
        kid = bytes.fromhex(hexid)
    except (ValueError, binascii.Error):
        raise NotVerified(f"the policy holds a malformed key {text[:60]!r}") from None
    if len(raw) != 33 or hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != kid:
        raise NotVerified(f"the policy's key {text[:60]!r} does not match its ID")
    return name, kid, raw[0], Ed25519PublicKey.from_public_bytes(raw[1:])


def policy(text: str) -> tuple[Key, list[Key], int, int]:
    log, witnesses, quorum, max_age = None, [], 0, 86_400
    for line in text.splitlines():
        word, _, value = line.strip().partition(" ")
        if word == "log":
            log = vkey(value)
        elif word == "witness":
            witnesses.append(vkey(value))
        elif word == "quorum":
            quorum = int(value) if value.isdigit() else 0
        elif word == "max-age":
            max_age = int(value) if value.isdigit() else 0
    if log is None or log[2] != 0x01 or not 1 <= quorum <= len(witnesses):
        raise NotVerified("the policy needs a log key and a quorum of 1 or more of its witnesses")
    return log, witnesses, quorum, max_age


def signatures(checkpoint: bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """A signed note's text and its signature lines (name, key ID, signature)."""
    text, sep, rest = checkpoint.decode("utf-8", "replace").rpartition("\n\n")
    if not sep:
        raise NotVerified("checkpoint is not a signed note")
    found = []
    for line in rest.splitlines():
        name, _, data = line.removeprefix("\u2014 ").partition(" ")
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise NotVerified("checkpoint has a signature line that is not base64") from None
        found.append((name, raw[:4], raw[4:]))
    return text + "\n", found


def verify(entries: bytes, checkpoint: bytes, pinned: str, now: int) -> tuple[int, int, int]:
    """(entries, signed size, witnesses) if the log verifies; NotVerified saying why if not."""
    (origin, log_id, _, log_key), witnesses, quorum, max_age = policy(pinned)
    text, signed = signatures(checkpoint)
    lines = text.split("\n")
    if len(lines) != 4 or lines[0] != origin or not lines[1].isdigit():
        raise NotVerified(f"checkpoint is not a checkpoint of the log {origin}")
    size, claimed = int(lines[1]), lines[2]
    try:
        log_key.verify(next(s for n, i, s in signed if (n, i) == (origin, log_id)), text.encode())
    except (StopIteration, InvalidSignature):
        raise NotVerified("checkpoint is not signed by the pinned log key") from None
    fresh = 0
    for name, kid, kind, key in witnesses:
        for n, i, sig in signed:
            if (n, i) != (name, kid) or kind != 0x04 or len(sig) != 72:
                continue
            (stamp,) = struct.unpack(">Q", sig[:8])
            message = f"cosignature/v1\ntime {stamp}\n{text}".encode()
            try:
                key.verify(sig[8:], message)
            except InvalidSignature:
                continue
            if now - max_age <= stamp <= now + 300:
                fresh += 1
                break
    if fresh < quorum:
        raise NotVerified(
            f"checkpoint is co-signed by {fresh} of the pinned witnesses within {max_age} s; "
            f"{quorum} are required: the log may have been rolled back or forked"
        )
    rows = entries.split(b"\n")
    if rows and rows[-1] == b"":
        rows.pop()
    leaves = []
    for seq, line in enumerate(rows):
        try:
            found = json.loads(line).get("seq")
        except (ValueError, AttributeError):
            raise NotVerified(f"entries.jsonl: line {seq + 1} is not a JSON entry") from None
        if found != seq:
            raise NotVerified(f"entries.jsonl: line {seq + 1} should be entry {seq}, is {found}")
        leaves.append(leaf(line))
    if size > len(leaves):
        raise NotVerified(f"the checkpoint signs {size} entries; the file has {len(leaves)}")
    if base64.b64encode(root(leaves[:size])).decode() != claimed:
        raise NotVerified(
            f"the first {size} entries do not hash to the signed root: an entry was changed, "
            "removed, added or reordered after it was signed"
        )
    return len(leaves), size, fresh


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
    where.add_argument("--dir", type=Path, help="a folder holding the files")
    parser.add_argument("--policy", type=Path, help="a trust policy you pinned yourself")
    given = parser.parse_args(argv)
    try:
        entries, checkpoint = fetch(given.url, given.dir)
        pinned = given.policy.read_text("utf-8") if given.policy else POLICY
    except OSError as error:
        print(f"could not read the log's files: {error}", file=sys.stderr)
        return 2
    try:
        count, size, witnesses = verify(entries, checkpoint, pinned, int(time.time()))
    except NotVerified as problem:
        print(f"the log does NOT verify: {problem}", file=sys.stderr)
        return 1
    print(
        f"the log verifies: {count} entries, a checkpoint of {size} signed by the pinned log key "
        f"and co-signed by {witnesses} pinned witnesses"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
