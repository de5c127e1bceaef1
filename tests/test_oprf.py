"""The OPRF against RFC 9497's own test vectors (Appendix A.1.1, ristretto255-SHA512, OPRF mode),
and the properties the custodian relies on."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

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
