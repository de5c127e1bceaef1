"""The OPRF against RFC 9497's own test vectors (Appendix A.1.1, ristretto255-SHA512, OPRF mode),
and the properties the custodian relies on."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import rbcl

from gpdpr.practice import oprf

VECTORS = orjson.loads(
    (Path(__file__).parent / "fixtures" / "rfc9497_ristretto255_sha512_oprf.json").read_bytes()
)


def test_the_key_is_derived_as_the_rfc_derives_it() -> None:
    key = oprf.derive_key(bytes.fromhex(VECTORS["Seed"]), bytes.fromhex(VECTORS["KeyInfo"]))
    assert key.hex() == VECTORS["skSm"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=["input 00", "input 5a x17"])
def test_each_step_matches_the_rfc(vector: dict[str, str]) -> None:
    key = bytes.fromhex(VECTORS["skSm"])
    data, r = bytes.fromhex(vector["Input"]), bytes.fromhex(vector["Blind"])
    blinded = oprf.blind([data], [r])
    assert blinded[0].hex() == vector["BlindedElement"]
    evaluated = oprf.blind_evaluate(key, blinded)
    assert evaluated[0].hex() == vector["EvaluationElement"]
    assert oprf.finalize([data], [r], evaluated)[0].hex() == vector["Output"]
    assert oprf.evaluate(key, data).hex() == vector["Output"]


def test_random_blinds_give_the_same_output_and_hide_the_input() -> None:
    key = oprf.generate_key()
    data = [b"nhs:9434765919"] * 2
    blinds = oprf.new_blinds(2)
    blinded = oprf.blind(data, blinds)
    assert blinded[0] != blinded[1]  # the custodian cannot tell two requests for one number apart
    outputs = oprf.finalize(data, blinds, oprf.blind_evaluate(key, blinded))
    assert outputs[0] == outputs[1] == oprf.evaluate(key, data[0])
    assert oprf.evaluate(oprf.generate_key(), data[0]) != outputs[0]


@pytest.mark.parametrize(
    "element",
    [bytes(32), b"\xff" * 32, b"\x01" * 31, oprf.hash_to_group(b"x") + b"\0"],
    ids=["identity", "not a point", "short", "long"],
)
def test_the_custodian_refuses_what_is_not_an_element(element: bytes) -> None:
    with pytest.raises(oprf.OprfError):
        oprf.blind_evaluate(oprf.generate_key(), [element])


def _crafted_elements() -> list[bytes]:
    """Valid elements, and the same spoiled in each way an encoding can be: random bytes, the
    top bit set or the sign bit flipped (non-canonical or negative field elements)."""
    made = [oprf.hash_to_group(b"%d" % i) for i in range(40)]
    spoiled = [bytes([*e[:31], e[31] | 0x80]) for e in made]
    spoiled += [bytes([e[0] ^ 1, *e[1:]]) for e in made]
    noise = [hashlib.sha256(b"%d" % i).digest() for i in range(120)]
    return [*made, *spoiled, *noise, bytes(32)]


def test_what_either_side_refuses_is_exactly_what_libsodium_calls_invalid_or_the_identity() -> None:
    """Both sides leave the decoding check to libsodium's multiplication (one decode, not two):
    it must refuse exactly the encodings the RFC says to refuse, at the custodian (blinded
    elements) and at the practice (evaluated ones)."""
    key = oprf.generate_key()
    blind = oprf.new_blinds(1)
    for element in _crafted_elements():
        invalid = element == bytes(32) or not rbcl.crypto_core_ristretto255_is_valid_point(element)
        steps: tuple[Callable[[bytes], object], ...] = (
            lambda e: oprf.blind_evaluate(key, [e]),
            lambda e: oprf.finalize([b"x"], blind, [e]),
        )
        for step in steps:
            try:
                step(element)
                refused = False
            except oprf.OprfError:
                refused = True
            assert refused == invalid, element.hex()


def test_a_batch_split_across_threads_gives_what_one_input_at_a_time_gives() -> None:
    key = oprf.generate_key()
    data = [b"nhs:%010d" % i for i in range(600)]  # enough for a chunk per core
    blinds = oprf.new_blinds(len(data))
    outputs = oprf.finalize(data, blinds, oprf.blind_evaluate(key, oprf.blind(data, blinds)))
    assert outputs == [oprf.evaluate(key, d) for d in data]


def test_loading_libsodium_leaves_no_copy_of_it_behind() -> None:
    """rbcl writes its libsodium to a temporary file at import; every extract imports it."""
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, gpdpr.practice.oprf; "
            "print(importlib.import_module('rbcl._sodium').lib_path)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    written = Path(shown.stdout.strip())
    assert written.name.endswith(".so") and not written.exists()
