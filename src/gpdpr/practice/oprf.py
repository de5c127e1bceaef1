"""An oblivious pseudorandom function: RFC 9497, OPRF mode, suite ristretto255-SHA512.

The practice blinds each input (an NHS number, say) with a random scalar, the custodian raises the
blinded element to its secret key, and the practice unblinds and hashes the result. The practice
learns the function's output and nothing of the key; the custodian sees only uniformly random group
elements and learns nothing of the input. The group arithmetic is libsodium's (through rbcl, which
bundles it); this module only follows the RFC's steps, and tests/test_oprf.py checks it against
the RFC's own test vectors.

Elements and scalars are the RFC's encodings: 32 bytes each (scalars little-endian).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import rbcl

# rbcl writes its bundled libsodium to a new temporary file at every import and never removes it
# (2.7 MB per process: every extract and every test subprocess). Loaded, the file is no longer
# needed (the mapping outlives its name), so it goes now.
with contextlib.suppress(OSError):
    os.unlink(importlib.import_module("rbcl._sodium").lib_path)

SUITE = "ristretto255-SHA512"
CONTEXT = b"OPRFV1-\x00-" + SUITE.encode()  # mode 0x00: OPRF
ELEMENT_BYTES = 32
SCALAR_BYTES = 32
OUTPUT_BYTES = 64
_IDENTITY = bytes(ELEMENT_BYTES)
_ONE = (1).to_bytes(SCALAR_BYTES, "little")
_SMALL_BATCH = 256  # fewer inputs than this per core: one thread does them all

T = TypeVar("T")
R = TypeVar("R")


class OprfError(ValueError):
    """An element or scalar that is not a valid encoding, or the identity the RFC forbids."""


def expand_message_xmd(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1, with SHA-512 (block 128 bytes, output 64)."""
    if len(dst) > 255 or length > 255 * 64:
        raise OprfError("expand_message_xmd: domain tag or length out of range")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha512(bytes(128) + message + length.to_bytes(2, "big") + b"\0" + dst_prime)
    b0_digest = b0.digest()
    blocks = [hashlib.sha512(b0_digest + b"\x01" + dst_prime).digest()]
    while len(blocks) * 64 < length:
        mixed = bytes(x ^ y for x, y in zip(b0_digest, blocks[-1], strict=True))
        blocks.append(hashlib.sha512(mixed + bytes([len(blocks) + 1]) + dst_prime).digest())
    return b"".join(blocks)[:length]


def hash_to_group(data: bytes) -> bytes:
    element: bytes = rbcl.crypto_core_ristretto255_from_hash(
        expand_message_xmd(data, b"HashToGroup-" + CONTEXT, 64)
    )
    return element


def hash_to_scalar(data: bytes, dst: bytes | None = None) -> bytes:
    uniform = expand_message_xmd(data, dst or b"HashToScalar-" + CONTEXT, 64)
    scalar: bytes = rbcl.crypto_core_ristretto255_scalar_reduce(uniform)
    return scalar


def derive_key(seed: bytes, info: bytes) -> bytes:
    """DeriveKeyPair's secret key (RFC 9497 section 3.2.1): the same seed and info, the same
    key. Used for the test vectors; the custodian's own key is random (`generate_key`)."""
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        key = hash_to_scalar(derive_input + bytes([counter]), b"DeriveKeyPair" + CONTEXT)
        if key != bytes(SCALAR_BYTES):
            return key
    raise OprfError("DeriveKeyPair found no key")  # pragma: no cover - probability 2^-2000


def generate_key() -> bytes:
    key: bytes = rbcl.crypto_core_ristretto255_scalar_random()
    return key


def public_key(key: bytes) -> bytes:
    """skS * G: what identifies the key without revealing it."""
    element: bytes = rbcl.crypto_scalarmult_ristretto255_base(_scalar(key))
    return element


def blind(inputs: Sequence[bytes], blinds: Sequence[bytes] | None = None) -> list[bytes]:
    """The blinded elements for `inputs`, under `blinds` (fresh random scalars, one per input,
    which the caller keeps to finalize). Fixed blinds are for the RFC's test vectors only."""
    if blinds is None or len(blinds) != len(inputs):
        raise OprfError("give one blind per input (see new_blinds)")
    return _in_parallel(_blind_chunk, list(zip(inputs, blinds, strict=True)))


def _blind_chunk(pairs: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    from_hash = rbcl.crypto_core_ristretto255_from_hash
    multiply = rbcl.crypto_scalarmult_ristretto255
    tag = b"HashToGroup-" + CONTEXT
    out = []
    for data, r in pairs:
        element = from_hash(expand_message_xmd(data, tag, 64))
        if element == _IDENTITY:  # pragma: no cover - probability 2^-252
            raise OprfError("an input hashed to the identity element")
        out.append(multiply(_scalar(r), element))
    return out


def new_blinds(count: int) -> list[bytes]:
    random = rbcl.crypto_core_ristretto255_scalar_random
    return [random() for _ in range(count)]


def blind_evaluate(key: bytes, blinded: Sequence[bytes]) -> list[bytes]:
    """The custodian's step: each blinded element times the secret key. Refuses anything that is
    not a valid non-identity element, so a caller cannot probe the key with crafted points."""
    key = _scalar(key)
    return _in_parallel(lambda chunk: _multiply_chunk(key, chunk), list(blinded))


def _multiply_chunk(key: bytes, elements: Sequence[bytes]) -> list[bytes]:
    return [_times(key, element) for element in elements]


def finalize(
    inputs: Sequence[bytes], blinds: Sequence[bytes], evaluated: Sequence[bytes]
) -> list[bytes]:
    """The practice's last step: unblind each evaluated element and hash it with its input."""
    if not len(inputs) == len(blinds) == len(evaluated):
        raise OprfError("finalize needs one blind and one evaluated element per input")
    return _in_parallel(_finalize_chunk, list(zip(inputs, blinds, evaluated, strict=True)))


def _finalize_chunk(triples: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
    inverses = _invert_all([_scalar(r) for _, r, _ in triples])
    return [
        _output(data, _times(inverse, element))
        for (data, _, element), inverse in zip(triples, inverses, strict=True)
    ]


def _invert_all(scalars: Sequence[bytes]) -> list[bytes]:
    """Every scalar's inverse with one inversion (Montgomery's trick): an inversion costs as much
    as thirty multiplications, and a batch holds thousands of blinds."""
    multiply = rbcl.crypto_core_ristretto255_scalar_mul
    running = []
    product = _ONE
    for s in scalars:
        running.append(product)
        product = multiply(product, s)
    inverse = rbcl.crypto_core_ristretto255_scalar_invert(product)
    out = [b""] * len(scalars)
    for i in range(len(scalars) - 1, -1, -1):
        out[i] = multiply(inverse, running[i])
        inverse = multiply(inverse, scalars[i])
    return out


def _in_parallel(work: Callable[[Sequence[T]], list[R]], items: list[T]) -> list[R]:
    """`work` over `items` in one chunk per core, in threads. libsodium's group arithmetic runs
    with the interpreter lock released (rbcl calls it through ctypes), so the chunks run at once;
    a small batch is not worth the threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = min(cores or 1, len(items) // _SMALL_BATCH)
    if parts <= 1:
        return work(items)
    size = -(-len(items) // parts)
    with ThreadPoolExecutor(parts, thread_name_prefix="oprf") as pool:
        chunks = pool.map(work, [items[i : i + size] for i in range(0, len(items), size)])
        return [out for chunk in chunks for out in chunk]


def evaluate(key: bytes, data: bytes) -> bytes:
    """The function's output computed directly from the key (the custodian's own use, e.g. an
    online opt-out): equal to blind, blind_evaluate and finalize done in turn."""
    element = hash_to_group(data)
    return _output(data, rbcl.crypto_scalarmult_ristretto255(_scalar(key), element))


def _output(data: bytes, unblinded: bytes) -> bytes:
    return hashlib.sha512(
        len(data).to_bytes(2, "big")
        + data
        + len(unblinded).to_bytes(2, "big")
        + unblinded
        + b"Finalize"
    ).digest()


def _scalar(key: bytes) -> bytes:
    if len(key) != SCALAR_BYTES or key == bytes(SCALAR_BYTES):
        raise OprfError("a scalar is 32 bytes and not zero")
    return key


def _times(scalar: bytes, element: bytes) -> bytes:
    """scalar * element for an element from outside (a blinded or an evaluated one), refused
    unless it is the canonical encoding of a group element other than the identity. libsodium's
    multiplication decodes the element and makes both checks itself (RFC 9497's deserialisation
    and its identity rule; the scalar is never zero, so only the identity gives the identity):
    checking first as well would cost a tenth of the multiplication again, per element."""
    if len(element) != ELEMENT_BYTES:
        raise OprfError("not a valid ristretto255 element: it must be 32 bytes")
    try:
        product: bytes = rbcl.crypto_scalarmult_ristretto255(scalar, element)
    except RuntimeError:
        raise OprfError("not a valid ristretto255 element (or the identity)") from None
    return product
