"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0, as RFC 6962 before it): hashing,
the tree head, inclusion and consistency proofs, and their verification.

A leaf is hashed as SHA-256(0x00 || entry), an interior node as SHA-256(0x01 || left || right),
the two prefixes keeping a leaf from ever passing for a node. A tree of n leaves splits at k, the
largest power of two below n: its left subtree is always complete. `Tree` keeps every complete
subtree's hash, one level per bytearray (32 bytes per hash), so a root or a proof costs
O(log² n) hashes however long the log, and appending costs O(1) amortised.

The verifiers take nothing but hashes, sizes and a proof: they are what anyone checking the
published log runs, and they follow RFC 9162 section 2.1.3.2 and 2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from gpdpr.errors import UserError

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(UserError):
    """A proof that does not prove what it claims."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """An append-only tree over leaf hashes."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_BYTES

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash, and the hash of every subtree it completes."""
        if len(leaf) != HASH_BYTES:
            raise ValueError("a leaf hash is 32 bytes")
        self._levels[0] += leaf
        level = 0
        while (len(self._levels[level]) // HASH_BYTES) % 2 == 0:
            pair = self._levels[level][-2 * HASH_BYTES :]
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += node_hash(bytes(pair[:HASH_BYTES]), bytes(pair[HASH_BYTES:]))
            level += 1

    def levels(self) -> list[bytes]:
        """Every stored hash, one level per bytes (level 0 the leaves): what `restore` takes."""
        return [bytes(level) for level in self._levels]

    def level_tail(self, level: int, start: int) -> bytes:
        """Level `level`'s bytes from byte `start` on (for appending them to a copy kept)."""
        return bytes(self._levels[level][start:]) if level < len(self._levels) else b""

    @property
    def depth(self) -> int:
        return len(self._levels)

    @classmethod
    def restore(cls, levels: list[bytes]) -> Tree:
        """A tree from its stored levels, their lengths checked against each other."""
        tree = cls()
        tree._levels = [bytearray(level) for level in levels] or [bytearray()]
        size = tree.size
        for n, level in enumerate(tree._levels):
            if len(level) != (size >> n) * HASH_BYTES:
                raise ValueError(f"level {n} of a stored tree of {size} has the wrong length")
        if size >> len(tree._levels):
            raise ValueError(f"a stored tree of {size} is missing levels")
        return tree

    def leaf(self, index: int) -> bytes:
        return self._stored(0, index)

    def _stored(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_BYTES : (index + 1) * HASH_BYTES])

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); `start` is always aligned as the RFC's recursion leaves it."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self._stored(n.bit_length() - 1, start // n)
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The tree head of the first `size` leaves (all of them by default)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"entry {index} is not in a tree of {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, start, start + k), self._hash(start + k, end)]
        return [*self._path(m - k, start + k, end), self._hash(start, start + k)]

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[0:new]) of RFC 9162 section 2.1.4.1 (empty when old is 0 or new)."""
        new = self.size if new is None else new
        self._check_size(new)
        if not 0 <= old <= new:
            raise ValueError(f"a tree of {old} cannot be a prefix of a tree of {new}")
        if old in (0, new):
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [self._hash(start, end)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, complete), self._hash(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self._hash(start, start + k)]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree has {self.size} entries, not {size}")


def root_of(entries: Iterable[bytes]) -> bytes:
    """The tree head over entries (not hashes): for a verifier recomputing a whole log."""
    return Tree(leaf_hash(e) for e in entries).root()


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf` (a leaf hash) is entry `index` of the tree of `size` with head `root`
    (RFC 9162 section 2.1.3.2); raise ProofError if not."""
    if not 0 <= index < size:
        raise ProofError(f"entry {index} cannot be in a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofError(f"entry {index} is not in the tree of {size} with that root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of `old_size` with head `old_root` is a prefix of the tree of
    `new_size` with head `new_root` (RFC 9162 section 2.1.4.2); raise ProofError if not."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of {old_size} cannot be a prefix of one of {new_size}")
    if old_size == new_size:
        if proof or old_root != new_root:
            raise ProofError(f"two different trees both claim to be the tree of {new_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("the empty tree needs no consistency proof")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ProofError(
            f"the tree of {old_size} is not a prefix of the tree of {new_size}: the log was "
            "rewritten after the older checkpoint was signed"
        )
