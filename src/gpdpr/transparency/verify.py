"""Checking the log from its public files alone: a folder (a copy of HOME/log) or a web address
serving the same files. Nothing here reads the service's database or keys.

- `verify`: every entry well-formed and numbered in order, the whole tree recomputed, the current
  checkpoint's root checked against it, its signature by the pinned log key and a quorum of fresh
  cosignatures by the pinned witnesses (gpdpr.transparency.policy): that is what refuses a
  rolled-back, forked or re-keyed log to a verifier that kept nothing. The pinned key may have
  been changed since, but only by key-change entries in the log, each signed by the key before
  it and witnessed by a quorum (gpdpr.transparency.key_change); and, given a checkpoint
  kept from before,
  a consistency proof (RFC 9162 section 2.1.4) that the current tree extends the kept one, so a
  rewrite, deletion, reordering or insertion since then cannot go unnoticed.
- `prove`: one entry's inclusion proof (RFC 9162 section 2.1.3) against the signed checkpoint.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import key_change, store
from gpdpr.transparency.merkle import leaf_hash, verify_consistency, verify_inclusion
from gpdpr.transparency.note import Verifier
from gpdpr.transparency.policy import Policy, PolicyError, accept


@dataclass(frozen=True)
class Source:
    """Where the public files are: a folder, or a URL serving them."""

    folder: Path | None = None
    url: str | None = None

    @property
    def name(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.url)

    def get(self, name: str) -> bytes | None:
        if self.folder is not None:
            path = self.folder / name
            return path.read_bytes() if path.exists() else None
        assert self.url is not None
        address = self.url.rstrip("/") + "/" + name
        try:
            with urllib.request.urlopen(address, timeout=30) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise UserError(f"cannot fetch {address}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"cannot fetch {address}: {exc}") from None

    def read(self) -> store.Contents:
        if self.folder is not None and not self.folder.is_dir():
            raise UserError(f"no log folder {self.folder}")
        # The checkpoint first: entries fetched after it cover it, even during a publish.
        signed, public = self.get(store.CHECKPOINT), self.get(store.PUBLIC_KEY)
        entries = self.get(store.ENTRIES) or b""
        contents = store.parse(self.folder or Path("."), entries, signed, public, self.name)
        if contents.checkpoint is None:
            raise UserError(f"{self.name} has no signed checkpoint: nothing to verify yet")
        return contents


@dataclass(frozen=True)
class Verified:
    size: int  # entries signed by the current checkpoint
    root: bytes
    time: str
    entries: int  # complete entries in the file (more than `size` if published since)
    torn: int  # bytes of an unfinished append at the end (being written, or a crash)
    since: cp.Checkpoint | None  # the kept checkpoint proven a prefix
    proof: list[bytes]
    witnesses: dict[str, int]  # the pinned witnesses whose fresh cosignatures counted, and when


def verify(
    source: Source,
    pinned: Policy,
    kept: bytes | None = None,
    kept_name: str = "",
    now: int | None = None,
) -> Verified:
    """Check the whole log against the pinned policy; with `kept` (an earlier checkpoint's
    file), prove the log has only grown since."""
    return check(source.read(), pinned, kept, kept_name, now)


def check(
    contents: store.Contents,
    pinned: Policy,
    kept: bytes | None = None,
    kept_name: str = "",
    now: int | None = None,
) -> Verified:
    """`verify` on contents already read (and so checked) from a source: the portal keeps them
    between page views rather than hashing the whole log for each."""
    current = contents.checkpoint
    assert current is not None
    moment = int(time.time()) if now is None else now
    found = key_change.find(contents.data, contents.offsets, current.size)
    keys = key_change.in_force(
        found, pinned.log, pinned.witnesses, pinned.quorum, contents.tree.root, moment
    )
    where = f"{store.CHECKPOINT} of {contents.size} entries"
    try:
        witnesses = accept(current, replace(pinned, log=keys[-1]), moment, where)
    except PolicyError:
        raise
    except cp.CheckpointError as exc:
        raise cp.CheckpointError(
            f"{exc}, nor by a key the log hands over to from the pinned one in a witnessed key "
            "change: it was re-signed with a key of someone's own"
        ) from None
    since, proof = None, []
    if kept is not None:
        since = cp.parse(kept, kept_name or "the kept checkpoint")
        _signed_by_one(since, keys, kept_name or "the kept checkpoint")
        if since.size > current.size:
            raise store.LogDamaged(
                f"the kept checkpoint signs {since.size} entries, the current one only "
                f"{current.size}: entries were deleted since it was signed"
            )
        proof = contents.tree.consistency_proof(since.size, current.size)
        verify_consistency(since.size, current.size, since.root, current.root, proof)
    return Verified(
        current.size,
        current.root,
        current.time,
        contents.size,
        contents.torn,
        since,
        proof,
        witnesses,
    )


def _signed_by_one(signed: cp.Checkpoint, keys: list[Verifier], where: str) -> None:
    """Signed by one of the keys the log has had since the pinned one (any of them signed a
    tree that the consistency proof then ties to the current one)."""
    for key in keys[:-1]:
        try:
            cp.check_signature(signed, key, where)
            return
        except cp.CheckpointError:
            continue
    cp.check_signature(signed, keys[-1], where)


@dataclass(frozen=True)
class Inclusion:
    entry: dict[str, Any]
    leaf: bytes
    size: int
    root: bytes
    proof: list[bytes]


def prove(source: Source, seq: int) -> Inclusion:
    """Entry `seq` and its inclusion proof in the tree the current checkpoint signs, checked."""
    return inclusion(source.read(), seq)


def inclusion(contents: store.Contents, seq: int) -> Inclusion:
    """`prove` on contents already read from a source."""
    current = contents.checkpoint
    assert current is not None
    if not 0 <= seq < current.size:
        raise UserError(
            f"there is no entry {seq} in the signed log (entries 0 to {current.size - 1})"
            if current.size
            else "the signed log is empty"
        )
    proof = contents.tree.inclusion_proof(seq, current.size)
    leaf = leaf_hash(contents.line(seq))
    verify_inclusion(leaf, seq, current.size, proof, current.root)
    return Inclusion(contents.entry(seq), leaf, current.size, current.root, proof)
